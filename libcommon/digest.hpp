// SPDX-License-Identifier: MIT
#pragma once
/// Digests and random identifiers with OpenSSL's libcrypto.

#include <string>
#include <string_view>

namespace kiln::digest {

/// Lowercase hex SHA-256 of `data`.
std::string sha256_hex(std::string_view data);

/// A random UUID, 8-4-4-4-12 lowercase hex (RFC 4122 version 4).
std::string random_uuid();

}  // namespace kiln::digest
