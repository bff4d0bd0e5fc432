// SPDX-License-Identifier: MIT
#include "capture.hpp"
