# Vagrantfile template for the parity corpus's vagrant post-processor.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.memory = 1024
  end
end
