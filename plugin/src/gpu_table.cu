// gpu_table.cu: one table on one device: loading it (vectors, key index, cache state), the lookup
// entry points and the counters. The kernels are in lookup_kernels.cuh, host_tier_kernels.cuh and
// index_build.cuh.
#include "gpu_table.hpp"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda_buffer.hpp"
#include "host_tier_kernels.cuh"
#include "index_build.cuh"
#include "lookup_kernels.cuh"
#include "staged_lookup.hpp"

namespace hps {

using kernels::Entry;
using kernels::kEmptyKey;
using kernels::kNumCounters;

// The table's device memory; kernels see it through `p`.
struct DeviceState {
    kernels::Params p{};
    DeviceBuffer<Entry> entries;
    DeviceBuffer<float> cache;
    PinnedBuffer<float> host;  // mapped: the host tier of hierarchical tables
    DeviceBuffer<int> row_slot;
    DeviceBuffer<unsigned long long> owner;
    DeviceBuffer<unsigned> freq;
    DeviceBuffer<unsigned long long> scalars;  // counters[kNumCounters], hand, epoch
    // Hierarchical tables: the lookups' scratch, and how it is laid out and walked.
    MemPool pool;
    int bucket_shift = 0;
    int buckets = 1;
    kernels::HostReadShape shape;
};

namespace {

// Vectors stream through a pinned staging buffer into the cache; no host tier is kept.
void load_resident(DeviceState& s, const TableFiles& files, int dim, int64_t rows, long long* keys,
                   const std::string& ctx) {
    const size_t row_bytes = static_cast<size_t>(dim) * sizeof(float);
    read_table_files(files, dim, reinterpret_cast<int64_t*>(keys), nullptr);
    s.cache = device_buffer<float>(static_cast<size_t>(rows) * dim, ctx + ", GPU cache");
    const int64_t stage_rows = std::max<int64_t>(1, (int64_t(128) << 20) / static_cast<int64_t>(row_bytes));
    PinnedBuffer<float> stage =
        pinned_buffer<float>(rows > 0 ? static_cast<size_t>(stage_rows) * dim : 0, cudaHostAllocDefault, ctx + ", staging");
    for (int64_t r = 0; r < rows; r += stage_rows) {
        const int64_t cnt = std::min(stage_rows, rows - r);
        read_vector_rows(files, dim, r, cnt, stage.get());
        HPS_CUDA(cudaMemcpy(s.cache.get() + r * dim, stage.get(), static_cast<size_t>(cnt) * row_bytes,
                            cudaMemcpyHostToDevice),
                 ctx);
    }
}

// All vectors in mapped pinned host memory, `slots` cache slots on the GPU, none filled yet.
void load_hierarchical(DeviceState& s, const TableFiles& files, int dim, int64_t rows, int64_t slots, long long* keys,
                       const std::string& ctx) {
    const size_t n_rows = static_cast<size_t>(rows);
    s.host = pinned_buffer<float>(n_rows * dim, cudaHostAllocMapped | cudaHostAllocPortable, ctx + ", pinned host tier");
    read_table_files(files, dim, reinterpret_cast<int64_t*>(keys), s.host.get());
    if (rows > 0) {
        void* dptr = nullptr;
        HPS_CUDA(cudaHostGetDevicePointer(&dptr, s.host.get(), 0), ctx);
        s.p.host = static_cast<const float*>(dptr);
    }
    if (slots == 0) return;
    const size_t n_slots = static_cast<size_t>(slots);
    s.cache = device_buffer<float>(n_slots * dim, ctx + ", GPU cache");
    s.owner = device_buffer<unsigned long long>(n_slots, ctx + ", slot owners");
    HPS_CUDA(cudaMemset(s.owner.get(), 0xff, n_slots * 8), ctx);  // row -1: empty
    s.row_slot = device_buffer<int>(n_rows, ctx + ", row slots");
    HPS_CUDA(cudaMemset(s.row_slot.get(), 0xff, n_rows * 4), ctx);  // -1: not cached
    s.freq = device_buffer<unsigned>(n_rows, ctx + ", frequencies");
    HPS_CUDA(cudaMemset(s.freq.get(), 0, n_rows * 4), ctx);
}

// Key r is r for every row r (what every rewrite exports): the table needs no key index.
bool identity_keys(const std::vector<long long>& keys) {
    for (size_t r = 0; r < keys.size(); ++r)
        if (keys[r] != static_cast<long long>(r)) return false;
    return true;
}

// Buckets of the miss list's counting sort: rows >> shift < 2^16 (host_tier_kernels.cuh).
void size_buckets(DeviceState& s, int64_t rows) {
    while (((std::max<int64_t>(rows, 1) - 1) >> s.bucket_shift) >= (int64_t(1) << 16)) ++s.bucket_shift;
    s.buckets = static_cast<int>(((std::max<int64_t>(rows, 1) - 1) >> s.bucket_shift) + 1);
}

// HPS_HOST_READ="ROWS:BLOCKS" sets how the miss path walks its list: rows per warp step (a power of
// two, 1..32) and blocks per SM (1..32). A tuning knob for machines whose host reads behave unlike
// the H100/H200 measured (bench/peers/lookup_peers --hier-sweep); unset, the measured default.
kernels::HostReadShape host_read_shape() {
    kernels::HostReadShape shape;
    const char* env = std::getenv("HPS_HOST_READ");
    if (!env || !*env) return shape;
    char* end = nullptr;
    const long rows = std::strtol(env, &end, 10);
    long blocks = -1;
    if (*end == ':') blocks = std::strtol(end + 1, &end, 10);
    if (*end != '\0' || rows < 1 || rows > 32 || (rows & (rows - 1)) != 0 || blocks < 1 || blocks > 32)
        throw Error(HPS_ERR_CONFIG, std::string("HPS_HOST_READ='") + env +
                                        "' is not ROWS:BLOCKS (rows per warp step: 1, 2, 4, 8, 16 or 32; blocks per "
                                        "SM: 1..32); unset it for the measured default");
    shape.rows_per_step = static_cast<int>(rows);
    shape.blocks_per_sm = static_cast<int>(blocks);
    return shape;
}

// The row of the key equal to the hash's empty marker (-1 if none); it is looked up aside.
int sentinel_row(const TableFiles& files, const std::vector<long long>& keys) {
    int found = -1;
    for (size_t r = 0; r < keys.size(); ++r) {
        if (keys[r] != kEmptyKey) continue;
        if (found >= 0)
            throw Error(HPS_ERR_TABLE_FILE, files.key_path + ": key " + std::to_string(kEmptyKey) + " appears twice (rows " +
                                                std::to_string(found) + " and " + std::to_string(r) +
                                                "); keys must be unique");
        found = static_cast<int>(r);
    }
    return found;
}

// Builds the key index of every key on the device; refuses duplicate keys.
void build_index(DeviceState& s, const TableFiles& files, const std::vector<long long>& keys, const std::string& ctx) {
    const long long rows = static_cast<long long>(keys.size());
    unsigned long long cap = 64;
    while (cap < 2ULL * static_cast<unsigned long long>(rows)) cap <<= 1;
    s.p.mask = cap - 1;
    s.entries = device_buffer<Entry>(cap, ctx + ", key index");
    kernels::fill_empty_kernel<<<std::min<unsigned long long>((cap + 255) / 256, 65535), 256>>>(s.entries.get(), cap);
    HPS_CUDA(cudaGetLastError(), ctx);
    if (rows == 0) return;
    DeviceBuffer<long long> dkeys = device_buffer<long long>(keys.size(), ctx + ", keys for the index");
    DeviceBuffer<unsigned long long> ddup = device_buffer<unsigned long long>(1, ctx);
    const unsigned long long none = ~0ULL;
    unsigned long long dup = none;
    HPS_CUDA(cudaMemcpy(dkeys.get(), keys.data(), keys.size() * 8, cudaMemcpyHostToDevice), ctx);
    HPS_CUDA(cudaMemcpy(ddup.get(), &none, 8, cudaMemcpyHostToDevice), ctx);
    kernels::build_kernel<<<std::min<long long>((rows + 255) / 256, 65535), 256>>>(s.entries.get(), s.p.mask, dkeys.get(),
                                                                                  rows, 0, ddup.get());
    HPS_CUDA(cudaGetLastError(), "building the key index; " + ctx);
    HPS_CUDA(cudaMemcpy(&dup, ddup.get(), 8, cudaMemcpyDeviceToHost), "building the key index; " + ctx);
    if (dup != none)
        throw Error(HPS_ERR_TABLE_FILE, files.key_path + ": key " + std::to_string(keys[static_cast<size_t>(dup)]) +
                                            " appears more than once (again at row " + std::to_string(dup) +
                                            "); keys must be unique, re-export the table");
}

void check_keys_and_out(const void* keys, int key_bits, int64_t n, const void* out) {
    if (key_bits != 32 && key_bits != 64)
        throw Error(HPS_ERR_INVALID_ARGUMENT, "key_bits = " + std::to_string(key_bits) + ": keys must be int32 (32) or int64 (64)");
    if (n < 0) throw Error(HPS_ERR_INVALID_ARGUMENT, "n = " + std::to_string(n) + " is negative");
    if (n > 0 && (!keys || !out))
        throw Error(HPS_ERR_INVALID_ARGUMENT, "keys or out is NULL with n = " + std::to_string(n));
}

}  // namespace

GpuTable::GpuTable(const TableSpec& spec, int device) : spec_(spec), device_(device) {
    const std::string ctx = "table '" + spec.table_name + "' of model '" + spec.model_name + "' on device " +
                            std::to_string(device);
    const TableFiles files = inspect_table_files(spec);
    rows_ = files.rows;
    const int dim = spec.emb_vec_size;
    const double want_slots = spec.gpucache ? spec.gpucacheper * static_cast<double>(rows_) : 0.0;
    slots_ = std::min<int64_t>(rows_, static_cast<int64_t>(want_slots + 0.999999));
    resident_ = (slots_ >= rows_);

    DeviceGuard guard(device);
    // Built here and moved into s_ only when complete: if loading throws, its buffers are freed
    // while the guard still holds this device.
    auto s = std::make_unique<DeviceState>();
    cudaDeviceProp prop;
    HPS_CUDA(cudaGetDeviceProperties(&prop, device), ctx);
    sm_count_ = prop.multiProcessorCount;

    kernels::Params& p = s->p;
    p.dim = dim;
    p.vec = (dim % 4) == 0 ? dim / 4 : dim;
    p.vec_shift = kernels::vec_shift_of(p.vec);
    p.default_value = spec.default_value;

    // Keys: read on the host, checked for the hash sentinel, then indexed on the GPU.
    std::vector<long long> keys(static_cast<size_t>(rows_));
    if (resident_)
        load_resident(*s, files, dim, rows_, keys.data(), ctx);
    else
        load_hierarchical(*s, files, dim, rows_, slots_, keys.data(), ctx);
    identity_ = identity_keys(keys);
    p.rows = rows_;
    p.sentinel_row = -1;
    if (!identity_) {
        p.sentinel_row = sentinel_row(files, keys);
        build_index(*s, files, keys, ctx);
    }
    if (!resident_) {
        s->pool = device_pool(device, ctx + ", lookup scratch pool");
        size_buckets(*s, rows_);
        s->shape = host_read_shape();
    }
    s->scalars = device_buffer<unsigned long long>(kNumCounters + 2, ctx + ", counters");
    HPS_CUDA(cudaMemset(s->scalars.get(), 0, (kNumCounters + 2) * sizeof(unsigned long long)), ctx);
    HPS_CUDA(cudaDeviceSynchronize(), ctx);

    p.entries = s->entries.get();
    p.cache = s->cache.get();
    p.row_slot = s->row_slot.get();
    p.owner = s->owner.get();
    p.freq = s->freq.get();
    p.slots = resident_ ? rows_ : slots_;
    p.counters = s->scalars.get();
    p.hand = s->scalars.get() + kNumCounters;
    p.epoch = reinterpret_cast<unsigned*>(s->scalars.get() + kNumCounters + 1);
    if (!resident_ && rows_ > 0) {
        staged_min_keys_ = copy_engine_min_keys();
        if (staged_min_keys_ != INT64_MAX) staged_ = std::make_unique<StagedMissPath>(rows_, dim, s->host.get(), ctx);
    }
    s_ = std::move(s);
}

GpuTable::~GpuTable() {
    DeviceGuard guard(device_, std::nothrow);
    staged_.reset();
    s_.reset();
}

namespace {

// A stream being captured into a CUDA graph cannot wait for the host (the copy-engine path does).
bool capturing(cudaStream_t stream) {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
        (void)cudaGetLastError();  // an implicit capture elsewhere: not an error of ours
        return true;
    }
    return status != cudaStreamCaptureStatusNone;
}

}  // namespace

void GpuTable::lookup(const void* keys, int key_bits, int64_t n, float* out, cudaStream_t stream) const {
    check_keys_and_out(keys, key_bits, n, out);
    if (n == 0) return;
    if (reinterpret_cast<uintptr_t>(keys) % (key_bits / 8) != 0)
        throw Error(HPS_ERR_INVALID_ARGUMENT, "keys pointer is not aligned to its key size");
    if (reinterpret_cast<uintptr_t>(out) % 4 != 0) throw Error(HPS_ERR_INVALID_ARGUMENT, "out pointer is not 4-byte aligned");
    // 16-byte loads and stores need 16-byte aligned rows in both the cache and out.
    const bool vec4 = (spec_.emb_vec_size % 4) == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
    kernels::Params p = s_->p;
    if (!vec4) p.vec = spec_.emb_vec_size;
    p.vec_shift = kernels::vec_shift_of(p.vec);
    DeviceGuard guard(device_);
    // Output positions travel as int32 inside the kernels (and, with the row, as one 64-bit miss
    // entry): launch in slices of at most 2^30 keys, 2^24 for hierarchical tables (which bounds the
    // miss list, 16 bytes per key, at 256 MiB).
    const int64_t slice = resident_ ? (int64_t(1) << 30) : (int64_t(1) << 24);
    std::unique_ptr<PoolScratch> scratch;  // hierarchical: one slice's miss list, reused by each
    for (int64_t off = 0; off < n; off += slice) {
        const long long m = static_cast<long long>(std::min(slice, n - off));
        const void* k = static_cast<const char*>(keys) + off * (key_bits / 8);
        float* o = out + off * spec_.emb_vec_size;
        if (resident_) {
            kernels::launch_resident(p, identity_, vec4, key_bits, k, m, o, sm_count_, stream);
            HPS_CUDA(cudaGetLastError(), "lookup kernel launch");
            continue;
        }
        if (staged_ && m >= staged_min_keys_ && !capturing(stream)) {
            staged_->lookup(p, identity_, vec4, key_bits, k, m, o, sm_count_, stream);
            continue;
        }
        const long long cap = std::min<long long>(slice, n);
        if (!scratch)
            scratch = std::make_unique<PoolScratch>(s_->pool.get(), miss_list_bytes(cap), stream,
                                                    "miss list of a hierarchical lookup");
        const kernels::MissList ml = miss_list(scratch->get(), cap);
        // count and bucket_count are adjacent: one memset clears both.
        HPS_CUDA(cudaMemsetAsync(ml.count, 0, sizeof(unsigned long long) + sizeof(unsigned) * s_->buckets, stream),
                 "clearing the miss list");
        kernels::launch_hierarchical(p, ml, s_->shape, identity_, vec4, key_bits, k, m, o, sm_count_, stream);
        HPS_CUDA(cudaGetLastError(), "hierarchical lookup launch");
    }
}

size_t GpuTable::miss_list_bytes(long long keys) const {
    return 2 * sizeof(unsigned long long) * static_cast<size_t>(keys) + sizeof(unsigned long long) +
           2 * sizeof(unsigned) * static_cast<size_t>(s_->buckets);
}

kernels::MissList GpuTable::miss_list(char* scratch, long long keys) const {
    kernels::MissList ml{};
    ml.entries = reinterpret_cast<unsigned long long*>(scratch);
    ml.ordered = ml.entries + keys;
    ml.count = ml.ordered + keys;
    ml.bucket_count = reinterpret_cast<unsigned*>(ml.count + 1);
    ml.bucket_next = ml.bucket_count + s_->buckets;
    ml.shift = s_->bucket_shift;
    ml.buckets = s_->buckets;
    return ml;
}

hps_stats_t GpuTable::stats() const {
    DeviceGuard guard(device_);
    unsigned long long c[kNumCounters] = {};
    // A plain copy on the legacy stream would wait for every stream; a non-blocking one only
    // reads whatever has completed, which is what counters mean for asynchronous work.
    Stream s = nonblocking_stream("stats");
    HPS_CUDA(cudaMemcpyAsync(c, s_->scalars.get(), sizeof(c), cudaMemcpyDeviceToHost, s.get()), "reading counters");
    HPS_CUDA(cudaStreamSynchronize(s.get()), "reading counters");
    hps_stats_t out{};
    out.lookups = c[kernels::kLookups];
    out.cache_hits = c[kernels::kCacheHits];
    out.host_hits = c[kernels::kHostHits];
    out.not_found = c[kernels::kNotFound];
    out.insertions = c[kernels::kInsertions];
    out.evictions = c[kernels::kEvictions];
    return out;
}

hps_table_info_t GpuTable::info() const {
    hps_table_info_t i{};
    i.rows = rows_;
    i.dim = spec_.emb_vec_size;
    i.device = device_;
    i.cache_slots = resident_ ? rows_ : slots_;
    i.resident = resident_ ? 1 : 0;
    i.default_value = spec_.default_value;
    i.identity_keys = identity_ ? 1 : 0;
    return i;
}

}  // namespace hps
