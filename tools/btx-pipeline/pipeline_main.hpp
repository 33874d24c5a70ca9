// SPDX-License-Identifier: MIT
// btx-pipeline as a library call: the whole program (command line, driver, workers,
// repeats, sweeps, reports) over recipe::btx_graph(). A program that adds an arm to the
// graph first (one btx_graph().add({...})) and then calls this is btx-pipeline with that arm.
#pragma once

namespace btx::pipeline {

int main(int argc, char** argv);

}  // namespace btx::pipeline
