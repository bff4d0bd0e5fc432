// SPDX-License-Identifier: MIT
#pragma once
/// Errors as values: every fallible libcommon function returns Result<T>.
/// The tool reports the Error once, at the top, and maps its Exit to the
/// process exit status (see exit_code.hpp).

#include <cassert>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "exit_code.hpp"

namespace kiln {

/// Where in a file something is; line and column count from 1, 0 = unknown.
struct Location {
  std::string file;
  int line = 0;
  int column = 0;
  std::string pointer;  ///< JSON pointer of the key, e.g. /builders/0/cpus
};

/// One failure: what went wrong, the exit status it maps to, and where.
struct Error {
  Exit code = Exit::software;
  std::string message;
  Location where;
  std::string step;  ///< the step of the tool that failed, e.g. "parse"

  Error() = default;
  Error(Exit c, std::string msg) : code(c), message(std::move(msg)) {}
  Error(Exit c, std::string msg, Location loc)
      : code(c), message(std::move(msg)), where(std::move(loc)) {}
};

/// Either a T or an Error. Check with ok() / operator bool before value().
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  Result(Error error) : v_(std::move(error)) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & {
    assert(ok());
    return std::get<0>(v_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(v_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(v_));
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const& {
    assert(!ok());
    return std::get<1>(v_);
  }
  Error&& error() && {
    assert(!ok());
    return std::get<1>(std::move(v_));
  }

 private:
  std::variant<T, Error> v_;
};

/// Result of a function that yields nothing but may fail.
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : err_(std::move(error)), failed_(true) {}

  bool ok() const { return !failed_; }
  explicit operator bool() const { return ok(); }
  const Error& error() const& {
    assert(failed_);
    return err_;
  }
  Error&& error() && {
    assert(failed_);
    return std::move(err_);
  }

 private:
  Error err_;
  bool failed_ = false;
};

using Status = Result<void>;

/// Several errors found in one pass (template checks report all at once).
using Errors = std::vector<Error>;

}  // namespace kiln
