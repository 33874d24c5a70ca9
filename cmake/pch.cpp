// SPDX-License-Identifier: MIT
// Translation unit that owns btx's shared precompiled header (see BtxTargets.cmake).
