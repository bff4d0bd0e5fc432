// SPDX-License-Identifier: MIT
#pragma once
/// Time formatting as Go and Packer do it, in UTC.

#include <cstdint>
#include <string>
#include <string_view>

namespace kiln::gotime {

/// Formats the instant (unix seconds + nanoseconds) with a Go reference-time
/// layout ("2006-01-02T15:04:05Z07:00"), exactly as Go's time.Format does
/// for a UTC time: every Go layout element is supported (Jan, January, 01,
/// 1, Mon, Monday, 2, _2, 02, __2, 002, 15, 3, 03, 4, 04, 5, 05, 2006, 06,
/// PM, pm, MST, Z07:00, -07:00, Z0700, -0700, Z07, -07, .000, .999, ,000...).
std::string format(std::int64_t unix_seconds, std::int32_t nanos, std::string_view layout);

/// Formats like C strftime with the conversions of
/// github.com/jehiah/go-strftime (what Packer's {{strftime}} uses), in UTC.
std::string strftime(std::int64_t unix_seconds, std::string_view format);

/// Parses a Go duration ("1h2m3.5s", "300ms", "0", "-1.5h") into seconds.
/// Returns false for anything time.ParseDuration rejects.
bool parse_duration(std::string_view text, double& seconds);

}  // namespace kiln::gotime
