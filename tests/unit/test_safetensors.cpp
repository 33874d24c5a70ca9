// SPDX-License-Identifier: MIT
// safetensors: writer -> reader round trips, the streaming writer, and one hand-crafted
// malformed file per validation rule, each error naming the file and the tensor.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <btx/io/detail/direct_writer.hpp>
#include <btx/io/detail/early_writeback.hpp>
#include <btx/io/detail/write_queue.hpp>
#include <btx/io/safetensors_reader.hpp>
#include <btx/io/safetensors_writer.hpp>

#include "../scratch.hpp"
#include "../test_support.hpp"

namespace fs = std::filesystem;
using btx::io::FormatError;
using btx::test::has;
using btx::test::scratch_dir;

namespace {

// Writes u64 N, the header text, then `data_bytes` zero bytes.
fs::path raw_file(const fs::path& file, const std::string& header, uint64_t data_bytes,
                  std::optional<uint64_t> claimed_n = std::nullopt) {
  std::ofstream out(file, std::ios::binary);
  const uint64_t n = claimed_n.value_or(header.size());
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header;
  out << std::string(data_bytes, '\0');
  return file;
}

// The message of the FormatError that opening `file` throws ("" if none).
std::string open_error(const fs::path& file) {
  try {
    btx::io::SafetensorsFile f(file);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("safetensors: writer then reader round-trips every supported dtype and shape") {
  auto dir = scratch_dir("roundtrip");
  std::map<std::string, torch::Tensor> tensors = {
      {"f32", torch::randn({3, 5})},
      {"f16", torch::randn({7}).to(torch::kFloat16)},
      {"bf16", torch::randn({2, 3, 1}).to(torch::kBFloat16)},
      {"f64", torch::randn({2}).to(torch::kFloat64)},
      {"i64", torch::arange(10, torch::kInt64)},
      {"i32", torch::arange(-3, 3, torch::kInt32)},
      {"i16", torch::arange(5, torch::kInt16)},
      {"i8", torch::arange(-4, 4, torch::kInt8)},
      {"u8", torch::arange(9, torch::kUInt8)},
      {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(3.5)},
      {"empty", torch::empty({0, 4})}};
  btx::io::save_safetensors(dir / "a.safetensors", tensors);
  btx::io::SafetensorsFile file(dir / "a.safetensors");
  CHECK(file.metadata().at("format") == "pt");
  CHECK(file.tensors().size() == tensors.size());
  for (const auto& [name, t] : tensors) {
    auto back = file.tensor(name);
    CHECK((back.scalar_type() == t.scalar_type()));
    CHECK(back.sizes() == t.sizes());
    CHECK(torch::equal(back, t));
  }
  // Larger dtypes first, then by name: the data section stays aligned for every view.
  CHECK(file.tensors().front().dtype.size == 8);
  CHECK(file.tensors().back().dtype.size == 1);
}

TEST_CASE("safetensors: header is space-padded to a multiple of 8 and views are zero-copy") {
  auto dir = scratch_dir("padding");
  btx::io::save_safetensors(dir / "a.safetensors", {{"x", torch::ones({4})}});
  std::ifstream in(dir / "a.safetensors", std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  CHECK(n % 8 == 0);
  btx::io::SafetensorsFile file(dir / "a.safetensors");
  auto a = file.tensor("x");
  auto b = file.tensor("x");
  CHECK(a.data_ptr() == b.data_ptr());  // both view the mapping
  a.add_(1.0f);                         // copy-on-write: the file keeps its bytes
  CHECK(
      torch::equal(btx::io::SafetensorsFile(dir / "a.safetensors").tensor("x"), torch::ones({4})));
}

TEST_CASE("safetensors: a view outlives the file object that made it") {
  auto dir = scratch_dir("lifetime");
  btx::io::save_safetensors(dir / "a.safetensors", {{"x", torch::arange(6.0).reshape({2, 3})}});
  torch::Tensor view;
  {
    btx::io::SafetensorsFile file(dir / "a.safetensors");
    view = file.tensor("x");
  }
  CHECK(torch::equal(view, torch::arange(6.0).reshape({2, 3})));
}

TEST_CASE("safetensors: unaligned data is copied instead of viewed") {
  auto dir = scratch_dir("unaligned");
  // Header of length 9 (not padded): F32 data starts at file offset 17.
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  while ((8 + header.size()) % 4 == 0) header += ' ';
  auto file = raw_file(dir / "u.safetensors", header, 8);
  btx::io::SafetensorsFile f(file);
  CHECK(torch::equal(f.tensor("x"), torch::zeros({2})));
  CHECK(f.tensor("x").data_ptr() != f.tensor("x").data_ptr());  // two copies
}

TEST_CASE("safetensors: streaming writer takes tensors one at a time in any order") {
  auto dir = scratch_dir("stream");
  auto a = torch::randn({4, 4}), b = torch::randn({3}).to(torch::kBFloat16);
  {
    btx::io::SafetensorsStreamWriter w(
        dir / "s.safetensors", {{"a", torch::kFloat32, {4, 4}}, {"b", torch::kBFloat16, {3}}});
    w.write("b", b);
    CHECK_FALSE(fs::exists(dir / "s.safetensors"));  // nothing at the path until finish()
    w.write("a", a.to(torch::kFloat64));             // converted to the declared dtype
    w.finish();
  }
  btx::io::SafetensorsFile f(dir / "s.safetensors");
  CHECK(torch::equal(f.tensor("a"), a));
  CHECK(torch::equal(f.tensor("b"), b));
}

TEST_CASE("safetensors: an unfinished streaming writer leaves nothing behind") {
  auto dir = scratch_dir("unfinished");
  {
    btx::io::SafetensorsStreamWriter w(dir / "s.safetensors", {{"a", torch::kFloat32, {2}}});
    CHECK_THROWS_WITH_AS(w.write("a", torch::ones({3})), doctest::Contains("\"a\""),
                         std::invalid_argument);
    CHECK_THROWS_WITH_AS(w.finish(), doctest::Contains("never written"), std::runtime_error);
  }
  CHECK(fs::is_empty(dir));
}

TEST_CASE("safetensors: every way to the disk writes the same bytes, from several threads") {
  using btx::io::DiskWrites;
  auto dir = scratch_dir("writeback");
  const fs::path src = dir / "source.bin";
  // Sizes that put tensor ends everywhere in a 4096-byte block; a bf16 tensor of 3
  // elements and an empty one; the header makes the data start unaligned.
  std::vector<btx::io::TensorDecl> decls;
  std::vector<torch::Tensor> values;
  for (int k = 0; k < 8; ++k) {
    decls.push_back({"t" + std::to_string(k), torch::kFloat32, {64, 1000 + 37 * k}});
    values.push_back(torch::randn({64, 1000 + 37 * k}));
  }
  decls.push_back({"small", torch::kBFloat16, {3}});
  values.push_back(torch::randn({3}).to(torch::kBFloat16));
  decls.push_back({"empty", torch::kFloat32, {0, 5}});
  values.push_back(torch::zeros({0, 5}));
  // Some tensors come as ranges of another file (BTX's experts), at an unaligned offset.
  const int64_t copied = 3;
  {
    std::ofstream out(src, std::ios::binary);
    out << "xyz";
    out.write(static_cast<const char*>(values[copied].data_ptr()),
              std::streamsize(values[copied].numel() * 4));
  }
  const btx::io::FileRange range{src, 3, uint64_t(values[copied].numel() * 4)};
  const auto write = [&](const fs::path& file, DiskWrites disk, size_t buffer_bytes) {
    auto engine = std::make_shared<btx::io::DirectWriteEngine>(2, buffer_bytes);
    btx::io::SafetensorsStreamWriter w(file, decls, {{"format", "pt"}}, disk, engine);
    const auto put = [&](size_t k) {
      if (k == size_t(copied)) return w.copy(decls[k].name, range);
      w.write(decls[k].name, values[k]);
    };
    std::thread other([&] {
      for (size_t k = 1; k < decls.size(); k += 2) put(k);
    });
    for (size_t k = decls.size(); k-- > 0;)  // backwards: blocks completed from both sides
      if (k % 2 == 0) put(k);
    other.join();
    w.finish();
  };
  write(dir / "plain.safetensors", DiskWrites::page_cache, 0);
  write(dir / "early.safetensors", DiskWrites::early, 0);
  write(dir / "direct.safetensors", DiskWrites::direct, 8192);  // tensors span buffers
  write(dir / "direct-big.safetensors", DiskWrites::direct, 8u << 20);
  const auto bytes = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string plain = bytes(dir / "plain.safetensors");
  CHECK(plain.size() % 4096 != 0);  // the padded last block was cut off
  CHECK(bytes(dir / "early.safetensors") == plain);
  CHECK(bytes(dir / "direct.safetensors") == plain);
  CHECK(bytes(dir / "direct-big.safetensors") == plain);
  btx::io::SafetensorsFile f(dir / "direct.safetensors");
  for (size_t k = 0; k < decls.size(); ++k) CHECK(torch::equal(f.tensor(decls[k].name), values[k]));
  for (const auto disk : {DiskWrites::early, DiskWrites::direct}) {
    // Given up half way: its threads stop, its temporary goes.
    btx::io::SafetensorsStreamWriter w(dir / "gone.safetensors", decls, {{"format", "pt"}}, disk);
    w.write("t0", values[0]);
    w.copy("t3", range);
  }
  CHECK_FALSE(fs::exists(dir / "gone.safetensors"));
  CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator()) == 5);
  // After stop(), push() is ignored (no thread starts on a file about to be closed).
  btx::io::EarlyWriteback idle(-1);
  idle.stop();
  idle.push(0, 1 << 20);
  idle.stop();
}

TEST_CASE("safetensors: a direct write that fails names the file, and a copy's short source") {
  auto dir = scratch_dir("direct-fail");
  const fs::path src = dir / "short.bin";
  std::ofstream(src, std::ios::binary) << std::string(100, 'a');
  std::vector<btx::io::TensorDecl> decls = {{"w", torch::kFloat32, {4096}}};
  {  // a range past the source's end: the read fails, naming the source
    btx::io::SafetensorsStreamWriter w(dir / "a.safetensors", decls, {{"format", "pt"}},
                                       btx::io::DiskWrites::direct);
    std::string message;
    try {
      w.copy("w", {src, 0, 4096 * 4});
    } catch (const std::runtime_error& e) {
      message = e.what();
    }
    CHECK(has(message, "short.bin"));
    CHECK(has(message, "truncated"));
  }
  CHECK_FALSE(fs::exists(dir / "a.safetensors"));
  // The engine's thread reports a failed write at the next acquire (here: a closed fd).
  auto engine = std::make_shared<btx::io::DirectWriteEngine>(1, 4096);
  const std::string name = "nowhere.safetensors";
  uint8_t* b = engine->acquire();
  engine->submit(b, -1, 0, 4096, &name);
  CHECK_THROWS_WITH_AS(engine->drain(), doctest::Contains("writing nowhere.safetensors failed"),
                       std::runtime_error);
  engine->drain();  // reported once
  // Where the kernel refuses a direct write (here: memory off the alignment), the file
  // drops O_DIRECT and the bytes go through the page cache instead.
  const fs::path file = dir / "fallback.bin";
  const int fd = btx::io::open_direct(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC);
  if (fd >= 0) {  // a filesystem with O_DIRECT
    std::vector<uint8_t> bytes(4096 + 1, 7);
    btx::io::detail::pwrite_all(fd, bytes.data() + 1, 4096, 0, file.string());
    CHECK((::fcntl(fd, F_GETFL) & O_DIRECT) == 0);
    ::close(fd);
    CHECK(fs::file_size(file) == 4096);
  }
}

TEST_CASE("safetensors: reader rejects a truncated file naming the file") {
  auto dir = scratch_dir("truncated");
  std::ofstream(dir / "t.safetensors", std::ios::binary) << "abc";
  CHECK(has(open_error(dir / "t.safetensors"), "t.safetensors"));
  CHECK(has(open_error(dir / "t.safetensors"), "truncated"));
  raw_file(dir / "t2.safetensors", "{}", 0, 1000);  // N larger than the file
  CHECK(has(open_error(dir / "t2.safetensors"), "truncated"));
  // Data section shorter than the header claims.
  raw_file(dir / "t3.safetensors", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
           12);
  CHECK(has(open_error(dir / "t3.safetensors"), "t3.safetensors"));
  CHECK(has(open_error(dir / "t3.safetensors"), "truncated or trailing"));
}

TEST_CASE("safetensors: reader rejects a header over 100,000,000 bytes") {
  auto dir = scratch_dir("huge");
  auto e = open_error(raw_file(dir / "h.safetensors", "{}", 0, 100'000'001));
  CHECK(has(e, "h.safetensors"));
  CHECK(has(e, "100,000,000"));
}

TEST_CASE("safetensors: reader rejects a header that is not a JSON object or not JSON") {
  auto dir = scratch_dir("notobject");
  CHECK(has(open_error(raw_file(dir / "a.safetensors", "[1, 2]", 0)), "not a JSON object"));
  CHECK(has(open_error(raw_file(dir / "b.safetensors", "{\"x\": ", 0)), "invalid JSON"));
  CHECK(has(open_error(raw_file(dir / "c.safetensors", R"({"x": 3})", 0)), "\"x\""));
}

TEST_CASE("safetensors: reader rejects duplicate keys") {
  auto dir = scratch_dir("dup");
  const std::string entry = R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  auto e =
      open_error(raw_file(dir / "d.safetensors", "{\"w\":" + entry + ",\"w\":" + entry + "}", 4));
  CHECK(has(e, "d.safetensors"));
  CHECK(has(e, "duplicate key \"w\""));
  auto e2 = open_error(
      raw_file(dir / "d2.safetensors",
               R"({"w":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4));
  CHECK(has(e2, "duplicate key \"dtype\""));
}

TEST_CASE("safetensors: reader rejects holes and overlaps between tensors") {
  auto dir = scratch_dir("offsets");
  auto hole = open_error(raw_file(dir / "hole.safetensors",
                                  R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                                  12));
  CHECK(has(hole, "hole.safetensors"));
  CHECK(has(hole, "\"b\""));
  CHECK(has(hole, "hole"));
  auto overlap = open_error(raw_file(dir / "overlap.safetensors",
                                     R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                     R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                     8));
  CHECK(has(overlap, "\"b\""));
  CHECK(has(overlap, "overlap"));
  auto first = open_error(raw_file(dir / "first.safetensors",
                                   R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8));
  CHECK(has(first, "\"a\""));
  auto reversed = open_error(raw_file(
      dir / "rev.safetensors", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", 4));
  CHECK(has(reversed, "END 0 < BEGIN 4"));
}

TEST_CASE("safetensors: reader rejects a byte span that does not match dtype x shape") {
  auto dir = scratch_dir("size");
  auto e = open_error(raw_file(dir / "s.safetensors",
                               R"({"w":{"dtype":"F16","shape":[2,3],"data_offsets":[0,24]}})", 24));
  CHECK(has(e, "s.safetensors"));
  CHECK(has(e, "\"w\""));
  CHECK(has(e, "need 12"));
}

TEST_CASE("safetensors: reader rejects shapes whose element count overflows") {
  auto dir = scratch_dir("overflow");
  auto e = open_error(raw_file(
      dir / "o.safetensors",
      R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}})", 0));
  CHECK(has(e, "\"w\""));
  CHECK(has(e, "overflows"));
  auto neg = open_error(raw_file(dir / "n.safetensors",
                                 R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", 0));
  CHECK(has(neg, "non-negative"));
}

TEST_CASE("safetensors: reader reports unsupported and unknown dtypes by tensor and file") {
  auto dir = scratch_dir("dtype");
  auto e = open_error(raw_file(dir / "f8.safetensors",
                               R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2));
  CHECK(has(e, "unsupported dtype F8_E4M3 for tensor \"w\" in"));
  CHECK(has(e, "f8.safetensors"));
  auto c = open_error(raw_file(dir / "c.safetensors",
                               R"({"z":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}})", 8));
  CHECK(has(c, "unsupported dtype C64 for tensor \"z\""));
}

TEST_CASE("safetensors: reader accepts only string-to-string __metadata__") {
  auto dir = scratch_dir("metadata");
  auto e = open_error(raw_file(dir / "m.safetensors", R"({"__metadata__":{"format":1}})", 0));
  CHECK(has(e, "m.safetensors"));
  CHECK(has(e, "__metadata__ value for \"format\""));
  CHECK(has(open_error(raw_file(dir / "m2.safetensors", R"({"__metadata__":"pt"})", 0)),
            "__metadata__ is not a JSON object"));
  CHECK(open_error(raw_file(dir / "ok.safetensors", R"({"__metadata__":{"format":"pt"}})", 0))
            .empty());
}

TEST_CASE("safetensors: reading one tensor by name and asking for a missing one") {
  auto dir = scratch_dir("byname");
  btx::io::save_safetensors(dir / "a.safetensors",
                            {{"a", torch::ones({2})}, {"b", torch::zeros({3})}});
  btx::io::SafetensorsFile f(dir / "a.safetensors");
  CHECK(f.contains("b"));
  CHECK(torch::equal(f.tensor("b"), torch::zeros({3})));
  CHECK_THROWS_WITH_AS((void)f.tensor("c"), doctest::Contains("\"c\" not found"), FormatError);
}

TEST_CASE("write queue: held bytes stay within the bound, errors reach the caller") {
  // Jobs holding 40 bytes each against a bound of 100: at most two wait or run at once.
  std::mutex m;
  std::condition_variable cv;
  uint64_t held = 0, peak = 0;
  {
    btx::io::WriteQueue queue(3, 100);
    for (int i = 0; i < 12; ++i) {
      {
        std::lock_guard lock(m);
        held += 40;  // counted before submit: the queue may block until earlier jobs end
      }
      queue.submit(40, [&] {
        std::unique_lock lock(m);
        peak = std::max(peak, held);
        cv.wait_for(lock, std::chrono::milliseconds(2));
        held -= 40;
      });
    }
    queue.drain();
  }
  CHECK(held == 0);
  CHECK(peak <= 120);  // two admitted plus the one being counted in before its submit

  // A job larger than the bound still runs, alone.
  int ran = 0;
  btx::io::WriteQueue big(2, 10);
  big.submit(1000, [&] { ++ran; });
  big.drain();
  CHECK(ran == 1);

  // The first error is rethrown by drain() (and by any later submit); jobs after it are dropped.
  btx::io::WriteQueue failing(1, 100);
  failing.submit(0, [] { throw std::runtime_error("disk full on shard 2"); });
  CHECK_THROWS_WITH(failing.drain(), doctest::Contains("disk full on shard 2"));
  CHECK_THROWS_WITH(failing.submit(0, [&] { ++ran; }), doctest::Contains("disk full"));
  CHECK(ran == 1);

  // No threads: each job runs inside submit().
  btx::io::WriteQueue inline_queue(0, 0);
  inline_queue.submit(5, [&] { ++ran; });
  CHECK(ran == 2);
}
