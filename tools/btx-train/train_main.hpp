// SPDX-License-Identifier: MIT
// btx-train as a library call: the whole program (command line, config, data, training,
// the model card and report), so a program that registers a family or router of its own
// first and then calls this is btx-train with it.
#pragma once

namespace btx::train_tool {

int main(int argc, char** argv);

}  // namespace btx::train_tool
