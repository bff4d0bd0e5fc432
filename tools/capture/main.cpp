// SPDX-License-Identifier: MIT
// capture: not written yet.
int main() { return 70; }
