/* seed-rng FILE: mixes FILE (up to 512 bytes) into the kernel's random pool
 * and credits it as entropy, so that the kernel's random numbers are ready at
 * once. Under TCG, with no RDRAND or virtio-rng, the kernel would otherwise
 * take seconds to gather entropy and dropbear's first key exchange waits for
 * it. The seed is made at build time and replaced at every boot; fine for a
 * throw-away test machine, not for anything that needs secrets. */
#include <fcntl.h>
#include <linux/random.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
  struct {
    struct rand_pool_info info;
    unsigned char bytes[512];
  } seed;
  if (argc != 2) {
    fprintf(stderr, "usage: seed-rng FILE\n");
    return 2;
  }
  int in = open(argv[1], O_RDONLY);
  if (in < 0) {
    perror(argv[1]);
    return 1;
  }
  ssize_t n = read(in, seed.bytes, sizeof seed.bytes);
  close(in);
  if (n < 32) {
    fprintf(stderr, "seed-rng: %s: too short\n", argv[1]);
    return 1;
  }
  int fd = open("/dev/random", O_WRONLY);
  if (fd < 0) {
    perror("/dev/random");
    return 1;
  }
  seed.info.entropy_count = (int)n * 8;
  seed.info.buf_size = (int)n;
  if (ioctl(fd, RNDADDENTROPY, &seed.info) < 0) {
    perror("RNDADDENTROPY");
    return 1;
  }
  close(fd);
  return 0;
}
