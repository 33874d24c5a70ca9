// SPDX-License-Identifier: MIT
// Version macros and the inline ABI namespace: two btx versions can coexist in one
// program because every symbol lives in btx::v<major>_<minor>.
#pragma once

#define BTX_VERSION_MAJOR 0
#define BTX_VERSION_MINOR 1
#define BTX_VERSION_PATCH 0
#define BTX_VERSION_STRING "0.1.0"

#define BTX_NAMESPACE_BEGIN inline namespace v0_1 {
#define BTX_NAMESPACE_END }
