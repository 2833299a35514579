// Host checks of the persistent decode kernel's stream-K fix-up (cuda/decode/fixup.h) and
// its partitions, with the kernel's own functions: per random plan, the segments of every
// worker cover each tile once, slots and roles are consistent, and a simulation of the
// CTAs (publish = write partial then set flag; merge = wait each flag, read, reset) runs to
// completion for every dispatch order of the blocks (W <= 5) and for random interleavings,
// with limited residency and ascending dispatch too, over two launches sharing the flags
// (no stale flag), each merge reading the partial of its own launch.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "../decode/fixup.h"
#include "check.h"

using namespace sparse_attn;
using namespace sparse_attn::cuda::decode;

namespace {

struct Plan {
  std::vector<int64_t> offsets, slot_base;
  int64_t outputs, workers;
};

Plan make_plan(const std::vector<int64_t>& tiles, int64_t workers) {
  Plan p;
  p.outputs = int64_t(tiles.size()), p.workers = workers;
  p.offsets.assign(p.outputs + 1, 0);
  for (int64_t o = 0; o < p.outputs; ++o) p.offsets[o + 1] = p.offsets[o] + tiles[o];
  const int64_t total = p.offsets.back();
  p.slot_base.assign(p.outputs + 1, 0);
  for (int64_t o = 0; o < p.outputs; ++o)
    p.slot_base[o + 1] = p.slot_base[o] + (tiles[o] == 0 ? 0
                                                          : stream_k_worker_of(total, workers, p.offsets[o + 1] - 1) -
                                                                stream_k_worker_of(total, workers, p.offsets[o]) + 1);
  return p;
}

// One CTA's program: steps in order.
enum class Op { kWritePartial, kSetFlag, kWaitFlag, kReadPartial, kWriteOut, kWriteEmpty };
struct Step {
  Op op;
  int64_t slot, output;
};

std::vector<Step> program(const Plan& p, int64_t w, bool separate) {
  std::vector<Step> prog;
  if (!separate)
    for (int64_t o = w; o < p.outputs; o += p.workers)
      if (p.offsets[o] == p.offsets[o + 1]) prog.push_back({Op::kWriteEmpty, -1, o});
  int nseg = 0;
  std::vector<StreamKSegment> segs;
  stream_k_segments(p.offsets.data(), p.outputs, p.workers, w, [&](const StreamKSegment& s) { segs.push_back(s); });
  for (const StreamKSegment& s : segs) {
    const FixupRole r = fixup_role(p.offsets.data(), p.slot_base.data(), p.outputs, p.workers, w, s, separate);
    CHECK(r.slot >= r.first_slot && r.slot < r.first_slot + r.nparts, "slot %lld outside its output", (long long)r.slot);
    CHECK((r.slot == r.first_slot) == s.host, "the host holds the first slot");
    if (r.kind == FixupKind::kPublish) {
      CHECK(separate || nseg == 0, "a non-host segment is a worker's first (worker %lld)", (long long)w);
      prog.push_back({Op::kWritePartial, r.slot, s.output});
      if (!separate) prog.push_back({Op::kSetFlag, r.slot, s.output});
    } else {
      CHECK(r.kind != FixupKind::kMerge || nseg + 1 == int(segs.size()), "a merging segment is a worker's last");
      for (int64_t k = 1; r.kind == FixupKind::kMerge && k < r.nparts; ++k) {
        prog.push_back({Op::kWaitFlag, r.first_slot + k, s.output});
        prog.push_back({Op::kReadPartial, r.first_slot + k, s.output});
      }
      prog.push_back({Op::kWriteOut, -1, s.output});
    }
    ++nseg;
  }
  return prog;
}

// Runs `launches` launches of the grid; blocks start in `order` (a permutation of block ids),
// at most `resident` at once; each step a random running CTA advances (blocked ones wait).
// Returns false on deadlock. Checks what each step reads and that every output is written once.
bool simulate(const Plan& p, const std::vector<int64_t>& order, int64_t resident, int launches, bool separate,
              std::mt19937& rng) {
  const int64_t W = p.workers, slots = p.slot_base.back();
  std::vector<int> flags(slots, 0);
  for (int launch = 1; launch <= launches; ++launch) {
    std::vector<int> partial(slots, 0);  // launch id that wrote the slot
    std::vector<int> written(p.outputs, 0);
    std::vector<std::vector<Step>> progs(W);
    std::vector<size_t> pc(W, 0);
    for (int64_t blk = 0; blk < W; ++blk) progs[blk] = program(p, worker_of_block(blk, W), separate);
    std::vector<int64_t> running;
    size_t next = 0, done = 0;
    while (done < size_t(W)) {
      while (int64_t(running.size()) < resident && next < order.size()) {
        const int64_t blk = order[next++];
        if (progs[blk].empty()) ++done; else running.push_back(blk);  // a worker without work exits
      }
      if (done == size_t(W)) break;
      std::vector<int64_t> ready;
      for (int64_t blk : running) {
        const Step& s = progs[blk][pc[blk]];
        if (!(s.op == Op::kWaitFlag && flags[s.slot] == 0)) ready.push_back(blk);
      }
      if (ready.empty()) return false;
      const int64_t blk = ready[rng() % ready.size()];
      const Step& s = progs[blk][pc[blk]];
      switch (s.op) {
        case Op::kWritePartial: partial[s.slot] = launch; break;
        case Op::kSetFlag:
          CHECK(flags[s.slot] == 0, "flag %lld set twice", (long long)s.slot);
          flags[s.slot] = 1;
          break;
        case Op::kWaitFlag: flags[s.slot] = 0; break;  // observed, reset for the next launch
        case Op::kReadPartial:
          CHECK(partial[s.slot] == launch, "slot %lld read before this launch wrote it", (long long)s.slot);
          break;
        case Op::kWriteOut:
        case Op::kWriteEmpty: ++written[s.output]; break;
      }
      if (++pc[blk] == progs[blk].size()) {
        running.erase(std::find(running.begin(), running.end(), blk));
        ++done;
      }
    }
    if (separate) {  // the merge kernel: every output from its slots, all of this launch
      for (int64_t o = 0; o < p.outputs; ++o) {
        for (int64_t k = p.slot_base[o]; k < p.slot_base[o + 1]; ++k)
          CHECK(partial[k] == launch, "separate merge: slot %lld not written", (long long)k);
        ++written[o];
      }
    }
    for (int64_t o = 0; o < p.outputs; ++o) CHECK(written[o] == 1, "output %lld written %d times", (long long)o, written[o]);
    for (int64_t k = 0; k < slots; ++k) CHECK(flags[k] == 0, "flag %lld left set after launch %d", (long long)k, launch);
  }
  return true;
}

void check_coverage(const Plan& p) {
  std::vector<int> seen(p.offsets.back(), 0);
  for (int64_t w = 0; w < p.workers; ++w)
    stream_k_segments(p.offsets.data(), p.outputs, p.workers, w, [&](const StreamKSegment& s) {
      for (int64_t t = s.tile_begin; t < s.tile_end; ++t) ++seen[p.offsets[s.output] + t];
    });
  for (size_t t = 0; t < seen.size(); ++t) CHECK(seen[t] == 1, "tile %zu covered %d times", t, seen[t]);
}

void check_partitions() {
  for (int D : {64, 128}) {
    const int row_vecs = D / 8, lane_vecs = D / 64;
    std::vector<int> cols(D, 0);
    for (int l8 = 0; l8 < 8; ++l8)
      for (int e = 0; e < lane_vecs * 8; ++e) ++cols[lane_column(l8, e)];
    for (int c = 0; c < D; ++c) CHECK(cols[c] == 1, "D=%d column %d held %d times", D, c, cols[c]);
    for (int l8 = 0; l8 < 8; ++l8)  // each of a lane's vectors is 8 contiguous, 16-byte aligned columns
      for (int v = 0; v < lane_vecs; ++v)
        for (int e = 0; e < 8; ++e) CHECK(lane_column(l8, 8 * v + e) == lane_column(l8, 8 * v) + e && lane_column(l8, 8 * v) % 8 == 0, "vector");
    // quarter-warp (8 lanes, same v) reads 128 contiguous bytes
    for (int v = 0; v < lane_vecs; ++v) {
      std::vector<int> c;
      for (int l8 = 0; l8 < 8; ++l8) c.push_back(lane_column(l8, 8 * v));
      std::sort(c.begin(), c.end());
      CHECK(c.back() - c.front() == 56, "D=%d quarter-warp span", D);
    }
    // rows: lane group grp takes rows grp + 4 i, i < 16; the copy loop i = tid + 128 k covers each vector once
    std::vector<int> rows(64, 0), vecs(64 * row_vecs, 0);
    for (int grp = 0; grp < 4; ++grp)
      for (int i = 0; i < 16; ++i) ++rows[grp + 4 * i];
    for (int r = 0; r < 64; ++r) CHECK(rows[r] == 1, "row %d", r);
    for (int tid = 0; tid < 128; ++tid)
      for (int i = tid; i < 64 * row_vecs; i += 128) ++vecs[i];
    for (int i = 0; i < 64 * row_vecs; ++i) CHECK(vecs[i] == 1, "copy vector %d", i);
  }
  for (int64_t ps : {1, 3, 16, 64, 128})
    for (int64_t j0 : {0, 5})
      for (int64_t n = 1; n <= 4; ++n) {  // rows u < n * ps map to (list index, slot) one to one
        std::vector<int> seen(n * ps, 0);
        for (int64_t u = 0; u < n * ps; ++u) {
          const SegmentRow r = segment_row(j0, ps, u);
          CHECK(r.list_index >= j0 && r.list_index < j0 + n && r.slot >= 0 && r.slot < ps, "segment_row range");
          ++seen[(r.list_index - j0) * ps + r.slot];
        }
        for (int x : seen) CHECK(x == 1, "segment_row bijection ps=%lld", (long long)ps);
      }
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  check_partitions();
  int plans = 0, deadlocks = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int64_t outputs = 1 + rng() % 6, W = 1 + rng() % 5;
    std::vector<int64_t> tiles(outputs);
    for (auto& t : tiles) t = rng() % 5 == 0 ? 0 : 1 + rng() % 6;
    const Plan p = make_plan(tiles, W);
    check_coverage(p);
    std::vector<int64_t> order(W);
    std::iota(order.begin(), order.end(), 0);
    do {  // every dispatch order, all resident
      for (bool separate : {false, true})
        if (!simulate(p, order, W, 2, separate, rng)) ++deadlocks;
    } while (std::next_permutation(order.begin(), order.end()));
    std::iota(order.begin(), order.end(), 0);
    for (int64_t R = 1; R < W; ++R)  // fewer resident than workers, ascending dispatch
      for (int rep = 0; rep < 4; ++rep)
        if (!simulate(p, order, R, 2, false, rng)) ++deadlocks;
    ++plans;
  }
  CHECK(deadlocks == 0, "%d simulated deadlocks", deadlocks);
  std::printf("decode_protocol_check: %d plans, %s\n", plans, g_failures ? "FAILED" : "ok");
  return g_failures ? 1 : 0;
}
