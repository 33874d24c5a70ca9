// SPDX-License-Identifier: MIT
// Umbrella header: everything btx offers.
#pragma once

#include <btx/models/generate.hpp>
#include <btx/models/llama.hpp>
#include <btx/models/llama_config.hpp>
#include <btx/models/llama_layers.hpp>
#include <btx/models/rotary.hpp>
#include <btx/version.hpp>
