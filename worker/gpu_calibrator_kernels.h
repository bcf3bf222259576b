// Device kernels of the GPU calibrator (worker/gpu_calibrator.h), launched over
// device pointers. Plain types only (fp16 travels as uint16_t) so that host
// code includes this without CUDA headers; each launcher returns a cudaError_t
// as int (0 = success).
//
// Row convention: the probe queries of all query heads form rows_total =
// num_heads * probes rows, row = query_head * probes + probe; the rows of KV
// head h (its GQA group) are the contiguous block [h * rows_per_kv,
// (h + 1) * rows_per_kv), rows_per_kv = group * probes.
#ifndef MOEND_WORKER_GPU_CALIBRATOR_KERNELS_H_
#define MOEND_WORKER_GPU_CALIBRATOR_KERNELS_H_

#include <cstdint>

namespace moend::worker::gpucal {

// fp32 probe queries [heads, head_stride floats] rows [0, probes) -> fp16
// [heads * probes, D].
int LaunchProbeQueriesToHalf(const float* q, int64_t head_stride, int heads, int probes, int head_dim,
                             uint16_t* out, void* stream);

// index [H, kept] = 0, 1, ..., kept - 1 per head: the selection when every
// candidate is kept (no scores needed).
int LaunchIota(int32_t* index, int num_kv_heads, int kept, void* stream);

// Dense fp16 keys / values of one keep from the packed output of
// kernels::cuda::LaunchQuantize (bits b for both K and V): rows [0, kept) are
// the dequantized kept tokens (fp32 code*scale+min exactly as the reference
// dequantizer, then rounded to fp16: the tensor cores' operand), rows
// [kept, kept+window) the fp16 window, rows [kept+window, rpad) zero.
struct DequantParams {
  const uint8_t* k_codes = nullptr;   // [H, kept, D*bits/8]
  const uint16_t* k_scale = nullptr;  // [H, ceil(kept/32), D]
  const uint16_t* k_min = nullptr;
  const uint8_t* v_codes = nullptr;   // [H, kept, D*bits/8]
  const uint16_t* v_scale = nullptr;  // [H, kept, D/32]
  const uint16_t* v_min = nullptr;
  const uint16_t* window_k = nullptr; // [H, window, D]
  const uint16_t* window_v = nullptr;
  int num_kv_heads = 0;
  int head_dim = 0;
  int kept = 0;
  int window = 0;
  int rpad = 0;                       // rows per head of the outputs
  int bits = 16;
  uint16_t* k_out = nullptr;          // [H, rpad, D] or null
  uint16_t* v_out = nullptr;          // [H, rpad, v_cols], columns [v_col0, v_col0 + D), or null
  int v_cols = 0;
  int v_col0 = 0;
};
int LaunchDequant(const DequantParams& p, void* stream);

// Prefix probe scores: for KV head h and its rows, s = scale * q . k over the
// dense keys [0, keys) (fp16 operands, fp32 accumulation, tensor cores).
// Keys are split over blockIdx.x in ranges of keys_per_split (a multiple of
// 64); every split holds at least one key < keys.
//   max-only: part_max[split, row] = max over the split's keys of s.
//   exp:      additionally p[row, key] = fp16(exp(s - offset[row])) (0 for
//             keys >= keys) and part_sum[split, row] = sum of those fp16 values.
struct ProbeScoreParams {
  const uint16_t* q = nullptr;     // [rows_total, D] fp16
  const uint16_t* k = nullptr;     // [H, rpad, D] fp16
  int num_kv_heads = 0;
  int head_dim = 0;                // 64 or 128
  int rows_per_kv = 0;
  int keys = 0;                    // valid keys R
  int rpad = 0;                    // multiple of 64
  int splits = 1;
  int keys_per_split = 64;
  float scale = 1.0f;
  bool write_p = false;            // false: max-only
  const float* offset = nullptr;   // [rows_total] (write_p)
  float* part_max = nullptr;       // [splits, rows_total]
  float* part_sum = nullptr;       // [splits, rows_total] (write_p)
  uint16_t* p = nullptr;           // [H, rows_per_kv, rpad] (write_p)
};
int LaunchProbeScores(const ProbeScoreParams& p, void* stream);
// Rows of one KV head a block of LaunchProbeScores covers.
int ProbeRowTile();

// offset[row] = max over splits of part_max[split, row].
int LaunchReduceMax(const float* part_max, int splits, int rows_total, float* offset, void* stream);

// The uncompressed tail's causal softmax, in place: s [rows_total, probes]
// (row r = probe i of its head sees tail keys [0, i]) -> exp(s - max) (0 past
// i), max[r], sum[r].
int LaunchTailSoftmax(float* s, int rows_total, int probes, float* max, float* sum, void* stream);

// Merges the prefix partial of one (keep, K bits) with the tail partial for
// each V-bits column block j in [0, nv) and accumulates the squared error
// against ref per KV head h (the sum over h's rows [h * rows_per_kv,
// (h + 1) * rows_per_kv)): err[h * err_stride + err_base + j] += sum
// ||o' - ref||^2. With ref_slot >= 0 it instead writes block ref_slot's output
// to ref and accumulates norm[h * err_stride] += sum ||o'||^2 over h's rows
// (the reference pass). Sets *flag when some row's actual prefix
// max is outside [offset - 4, offset + 10] (the fp16 P lost precision or may
// have overflowed; the caller recomputes with the exact max).
struct MergeParams {
  const float* o = nullptr;          // [rows_total, o_cols] unnormalized prefix outputs
  int o_cols = 0;                    // nv * D
  int nv = 0;
  const float* offset = nullptr;     // [rows_total] the exp offset used for p
  const float* part_max = nullptr;   // [splits, rows_total]
  const float* part_sum = nullptr;   // [splits, rows_total]
  int splits = 0;
  const float* tail_max = nullptr;   // [rows_total]
  const float* tail_sum = nullptr;
  const float* tail_o = nullptr;     // [rows_total, D]
  float* ref = nullptr;              // [rows_total, D]
  int rows_total = 0;                // num_kv_heads * rows_per_kv
  int rows_per_kv = 0;
  int head_dim = 0;
  int ref_slot = -1;
  double* err = nullptr;             // [num_kv_heads, err_stride]
  int err_base = 0;
  int err_stride = 0;                // doubles between two KV heads' sums
  double* norm = nullptr;            // [num_kv_heads] at stride err_stride
  unsigned* flag = nullptr;
};
int LaunchMerge(const MergeParams& p, void* stream);

}  // namespace moend::worker::gpucal

#endif  // MOEND_WORKER_GPU_CALIBRATOR_KERNELS_H_
