// SPDX-License-Identifier: MIT
// btx-merge as a library call: the whole program (command line, config, merge, write). A
// program that registers a merge method, averaging or gate mode of its own first
// (btx::merge::methods().add({...})) and then calls this is btx-merge with it.
#pragma once

namespace btx::merge_tool {

int main(int argc, char** argv);

}  // namespace btx::merge_tool
