// SPDX-License-Identifier: MIT
#pragma once
/// Digests and random identifiers with OpenSSL's libcrypto.

#include <string>
#include <string_view>

#include "result.hpp"

namespace kiln::digest {

/// Lowercase hex SHA-256 of `data`.
std::string sha256_hex(std::string_view data);

/// Lowercase hex digest of a file read in 1 MiB blocks (memory stays flat
/// whatever its size); `algorithm` is md5, sha1, sha224, sha256, sha384 or
/// sha512. Errors: Exit::noinput (cannot read), Exit::dataerr (unknown
/// algorithm).
Result<std::string> file_hex(const std::string& path, const std::string& algorithm);

/// A random UUID, 8-4-4-4-12 lowercase hex (RFC 4122 version 4).
std::string random_uuid();

}  // namespace kiln::digest
