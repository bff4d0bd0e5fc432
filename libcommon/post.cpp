// SPDX-License-Identifier: MIT
#include "post.hpp"
