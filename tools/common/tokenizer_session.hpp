// SPDX-License-Identifier: MIT
// A tokenizer.json kept open in one long-lived Python child (the `tokenizers` package, the
// Rust library transformers runs), for programs that encode and decode many small texts: a
// pipeline's math evaluation encodes a prompt and decodes the answer token by token, and a
// child process per call would cost more than the model's forward pass.
//
// Protocol, one JSON line each way: ["e", text] -> [ids] (no special tokens added: corpora
// are encoded as running text), ["d", [ids]] -> text. The first line the child writes is the
// tokenizer's vocabulary size with added tokens. Requests are serialised by a mutex; the
// pipes are close-on-exec, so worker processes a program starts do not inherit them.
#pragma once

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

extern char** environ;

namespace btx::tools {

// The last non-empty line of a child's stderr (what it says when it gives up).
inline std::string last_line(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  const auto nl = text.rfind('\n');
  return nl == std::string::npos ? text : text.substr(nl + 1);
}

class TokenizerSession {
 public:
  // Starts `python` on `tokenizer_json`; throws naming the file and the child's last error
  // line when it cannot load it.
  TokenizerSession(const std::string& python, const std::filesystem::path& tokenizer_json)
      : file_(tokenizer_json) {
    err_file_ = std::filesystem::temp_directory_path() /
                ("btx-tokenizer-session-" + std::to_string(getpid()) + "-" +
                 std::to_string(reinterpret_cast<uintptr_t>(this)) + ".stderr");
    int to_child[2], from_child[2];
    if (pipe2(to_child, O_CLOEXEC) != 0) throw std::runtime_error("tokenizer session: pipe failed");
    if (pipe2(from_child, O_CLOEXEC) != 0) {
      close(to_child[0]);
      close(to_child[1]);
      throw std::runtime_error("tokenizer session: pipe failed");
    }
    static const char* kServer =
        "import json, sys\n"
        "from tokenizers import Tokenizer\n"
        "t = Tokenizer.from_file(sys.argv[1])\n"
        "out = sys.stdout\n"
        "out.write(json.dumps(t.get_vocab_size(with_added_tokens=True)) + '\\n'); out.flush()\n"
        "for line in sys.stdin:\n"
        "    op, arg = json.loads(line)\n"
        "    r = t.encode(arg, add_special_tokens=False).ids if op == 'e' else "
        "t.decode(arg, skip_special_tokens=False)\n"
        "    out.write(json.dumps(r) + '\\n'); out.flush()\n";
    std::vector<std::string> argv{python, "-c", kServer, file_.string()};
    std::vector<char*> c_argv;
    for (auto& a : argv) c_argv.push_back(a.data());
    c_argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, to_child[0], 0);
    posix_spawn_file_actions_adddup2(&actions, from_child[1], 1);
    posix_spawn_file_actions_addopen(&actions, 2, err_file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0600);
    const int rc = posix_spawnp(&pid_, c_argv[0], &actions, nullptr, c_argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(to_child[0]);
    close(from_child[1]);
    to_ = to_child[1];
    from_ = from_child[0];
    if (rc != 0) {
      pid_ = -1;
      shutdown();
      throw std::runtime_error("tokenizer session: cannot start " + python + " (set BTX_PYTHON)");
    }
    const auto first = read_line();
    if (!first) {
      // A constructor that throws runs no destructor: reap the child and close the pipes.
      try {
        fail("could not load it");
      } catch (...) {
        shutdown();
        throw;
      }
    }
    vocab_size_ = nlohmann::json::parse(*first).get<int64_t>();
  }

  TokenizerSession(const TokenizerSession&) = delete;
  TokenizerSession& operator=(const TokenizerSession&) = delete;
  ~TokenizerSession() { shutdown(); }

  [[nodiscard]] int64_t vocab_size() const { return vocab_size_; }

  [[nodiscard]] std::vector<int64_t> encode(std::string_view text) {
    return request(nlohmann::json::array({"e", std::string(text)})).get<std::vector<int64_t>>();
  }
  [[nodiscard]] std::string decode(const std::vector<int64_t>& ids) {
    return request(nlohmann::json::array({"d", ids})).get<std::string>();
  }

 private:
  nlohmann::json request(const nlohmann::json& message) {
    std::lock_guard lock(mutex_);
    // Text that is not UTF-8 is replaced (U+FFFD), as Python would decode the file.
    const std::string line =
        message.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    for (size_t done = 0; done < line.size();) {
      const ssize_t n = write(to_, line.data() + done, line.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("the tokenizer process stopped");
      done += size_t(n);
    }
    const auto reply = read_line();
    if (!reply) fail("the tokenizer process stopped");
    return nlohmann::json::parse(*reply);
  }

  std::optional<std::string> read_line() {
    for (;;) {
      if (const auto nl = buffer_.find('\n'); nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      char chunk[1 << 16];
      const ssize_t n = read(from_, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return std::nullopt;
      buffer_.append(chunk, size_t(n));
    }
  }

  [[noreturn]] void fail(const std::string& what) {
    std::ifstream in(err_file_);
    const std::string last = last_line({std::istreambuf_iterator<char>(in), {}});
    throw std::runtime_error("tokenizer " + file_.string() + ": " + what +
                             (last.empty() ? std::string() : ": " + last));
  }

  void shutdown() {
    if (to_ >= 0) close(to_);  // the child's loop ends at end of input
    to_ = -1;
    if (from_ >= 0) close(from_);
    from_ = -1;
    if (pid_ > 0) {
      int status = 0;
      while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      pid_ = -1;
    }
    std::error_code ignored;
    std::filesystem::remove(err_file_, ignored);
  }

  std::filesystem::path file_, err_file_;
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
  std::string buffer_;
  int64_t vocab_size_ = 0;
  std::mutex mutex_;
};

}  // namespace btx::tools
