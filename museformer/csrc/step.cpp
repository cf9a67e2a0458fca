// The lean sampling loop's hot path as ATen calls from C++ (museformer/native.py builds and loads it).
//
// Each function is the Python code it names, operator for operator: the same ATen kernels on the same
// operands in the same order, or, for a run of exact IEEE steps (scale by a float, mask, casts, division,
// the first minimum), one plain loop that gives the same bits; so its results are bit for bit the Python
// path's (tests/render/test_native_step.py). What it saves is the interpreter's per-operator overhead
// (argument parsing, tensor wrapping) and, in the loops, ATen's own, most of a generation step's cost for
// a 128-wide model.
#include <torch/extension.h>

#include <cmath>
#include <limits>
#include <vector>

using at::Tensor;

namespace {

// scores.mul_(scale) then .view(B, H, n, L).masked_fill_(blocked, float32 lowest), as one loop: ATen's
// mul_ by a Python float multiplies in float by the float-rounded scale, so this is the same bits.
// scores (B * H, n, L) contiguous float32; blocked (B, 1, n, L) bool, any strides.
void scale_and_block(Tensor& scores, const Tensor& blocked, int64_t b, int64_t h, int64_t n, int64_t length,
                     float scale) {
  float* s = scores.data_ptr<float>();
  const bool* m = blocked.data_ptr<bool>();
  const int64_t sb = blocked.stride(0), sn = blocked.stride(2), sl = blocked.stride(3);
  const float lowest = std::numeric_limits<float>::lowest();
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t hi = 0; hi < h; ++hi) {
      for (int64_t ni = 0; ni < n; ++ni) {
        float* row = s + ((bi * h + hi) * n + ni) * length;
        const bool* mask = m + bi * sb + ni * sn;
        for (int64_t li = 0; li < length; ++li) {
          row[li] = mask[li * sl] ? lowest : row[li] * scale;
        }
      }
    }
  }
}

// incremental.attend_transposed in float32: q (B, H, n, D), keys_t (B, H, D, L), values (B, H, L, D),
// blocked (B, 1, n, L) True = not attended -> (B, H, n, D)
Tensor attend_transposed(const Tensor& q, const Tensor& keys_t, const Tensor& values, const Tensor& blocked) {
  const int64_t b = q.size(0), h = q.size(1), n = q.size(2), d = q.size(3), length = keys_t.size(-1);
  Tensor scores = at::bmm(q.reshape({b * h, n, d}), keys_t.reshape({b * h, d, length}));  // (B * H, n, L)
  scale_and_block(scores, blocked, b, h, n, length, static_cast<float>(std::pow(static_cast<double>(d), -0.5)));
  Tensor probs = at::softmax(scores, -1).view({b * h, n, length});  // (B * H, n, L)
  return at::bmm(probs, values.reshape({b * h, length, d})).view({b, h, n, d});  // (B, H, n, D)
}

// incremental.Linear.__call__ with a bias: (N, in) -> (N, out)
inline Tensor linear(const Tensor& rows, const Tensor& weight_t, const Tensor& bias) {
  return at::addmm(bias, rows, weight_t);
}

}  // namespace

// incremental.layer_step on a step that opens no bar (n = 1, the view not rebuilt, room in the view):
// x (B, C) rows; w: the LayerWeights as 18 tensors (ln1 w, b; qkv w_t, b; o w_t, b; ln2 w, b; cross_q w_t,
// b; cross_o w_t, b; ln3 w, b; fc1 w_t, b; fc2 w_t, b); cache: vk_t (B, H, D, capv), vv (B, H, capv, D),
// xk_t (B, H, D, Mx), xv (B, H, Mx, D); col: the view column of the step's key.
Tensor layer_step(Tensor x, const std::vector<Tensor>& w, const std::vector<Tensor>& cache, int64_t col,
                  const Tensor& self_blocked, const Tensor& cross_blocked, int64_t heads, double eps) {
  const int64_t b = x.size(0), c = x.size(1), d = c / heads;
  const std::vector<int64_t> shape{c};
  Tensor qkv = linear(at::layer_norm(x, shape, w[0], w[1], eps), w[2], w[3]);  // (B, 3C)
  cache[0].narrow(3, col, 1).copy_(qkv.narrow(1, c, c).view({b, heads, d, 1}));  // (B, H, D, 1)
  cache[1].narrow(2, col, 1).copy_(qkv.narrow(1, 2 * c, c).view({b, heads, 1, d}));  // (B, H, 1, D)
  Tensor keys_t = cache[0].narrow(3, 0, col + 1), values = cache[1].narrow(2, 0, col + 1);
  Tensor q = qkv.narrow(1, 0, c).view({b, heads, 1, d});  // (B, H, 1, D)
  x = x + linear(attend_transposed(q, keys_t, values, self_blocked).view({b, c}), w[4], w[5]);
  q = linear(at::layer_norm(x, shape, w[6], w[7], eps), w[8], w[9]).view({b, heads, 1, d});  // (B, H, 1, D)
  x = x + linear(attend_transposed(q, cache[2], cache[3], cross_blocked).view({b, c}), w[10], w[11]);
  return x + linear(at::gelu(linear(at::layer_norm(x, shape, w[12], w[13], eps), w[14], w[15])), w[16], w[17]);
}

// MuseformerDecoder's generation step on a step that opens no bar, built once per generation with what
// stays fixed (the layers' weights, the embedding tables, the final layer norm): _same_bar_inputs (the
// embedding of the newest token, --align-source, the style vector; the token's key joins the views),
// every layer's layer_step, the final layer norm and MuseformerDecoder.project on the candidates.
class SameBarStep {
 public:
  // weights: per layer LayerWeights.flat(); tables: the token table (scaled) and the in-bar table;
  // align_w_t (C, C) and align_b: --align-source's projection (absent: none; no bias: a plain product)
  SameBarStep(std::vector<std::vector<Tensor>> weights, std::vector<Tensor> tables, int64_t max_in_bar,
              c10::optional<Tensor> align_w_t, c10::optional<Tensor> align_b, int64_t heads, double eps,
              Tensor final_w, Tensor final_b, double final_eps, int64_t vocab)
      : weights_(std::move(weights)), tables_(std::move(tables)), max_in_bar_(max_in_bar),
        align_w_t_(std::move(align_w_t)), align_b_(std::move(align_b)), heads_(heads), eps_(eps),
        final_w_(std::move(final_w)), final_b_(std::move(final_b)), final_eps_(final_eps), vocab_(vocab) {}

  // tok (B, 1) newest tokens at content position `step`: position (C,) its sinusoid, bar_rows (B, 1, C),
  // in_bar (B,) the previous token's in-bar offsets; anchors (B, S + 1) and enc (B, L, C) with
  // --align-source (anchor_col: min(step, S)); style (B, 1, C) or absent; caches: per layer vk_t, vv,
  // xk_t, xv; col: the view column of the token's key; view_blocked (B, capv) the self view's mask
  // buffer (its column col is opened here); cross_blocked (B, 1, 1, Mx); head_t (C, K) the candidates'
  // output rows -> ((B, 1, vocab) logits, -inf outside the candidates; (B,) the token's in-bar offsets)
  std::tuple<Tensor, Tensor> operator()(const Tensor& tok, const Tensor& position, const Tensor& bar_rows,
                                        const Tensor& in_bar, const c10::optional<Tensor>& anchors,
                                        int64_t anchor_col, const c10::optional<Tensor>& enc,
                                        const c10::optional<Tensor>& style, const std::vector<Tensor>& caches,
                                        int64_t col, const Tensor& view_blocked, const Tensor& cross_blocked,
                                        const Tensor& head_t, const Tensor& candidates) const {
    Tensor next_in_bar = in_bar + 1;  // (B,)
    Tensor x = embed(tok, position, bar_rows, next_in_bar, anchors, anchor_col, enc, style);  // (B, 1, C)
    view_blocked.select(1, col).fill_(false);  // DecoderState.same_bar_view
    Tensor self_blocked = view_blocked.narrow(1, 0, col + 1).view({-1, 1, 1, col + 1});  // (B, 1, 1, Lv)
    Tensor rows = x.view({x.size(0), x.size(2)});  // (B, C)
    for (size_t i = 0; i < weights_.size(); ++i) {
      const std::vector<Tensor> cache(caches.begin() + 4 * i, caches.begin() + 4 * i + 4);
      rows = layer_step(rows, weights_[i], cache, col, self_blocked, cross_blocked, heads_, eps_);
    }
    Tensor h = at::layer_norm(rows, {rows.size(1)}, final_w_, final_b_, final_eps_);  // (B, C)
    Tensor logits = at::full({h.size(0), vocab_}, -std::numeric_limits<float>::infinity(), h.options());  // (B, V)
    logits.index_copy_(1, candidates, h.mm(head_t));
    return {logits.unsqueeze(1), next_in_bar};  // (B, 1, V), (B,)
  }

 private:
  // MuseformerDecoder._embed_step (StepTables.content, then --align-source) and the style vector -> (B, 1, C)
  Tensor embed(const Tensor& tok, const Tensor& position, const Tensor& bar_rows, const Tensor& in_bar,
               const c10::optional<Tensor>& anchors, int64_t anchor_col, const c10::optional<Tensor>& enc,
               const c10::optional<Tensor>& style) const {
    Tensor x = at::embedding(tables_[0], tok) + position;  // (B, 1, C)
    x = x + bar_rows;
    x = x + at::embedding(tables_[1], in_bar.clamp_max(max_in_bar_ - 1).unsqueeze(1));
    if (anchors.has_value() && align_w_t_.has_value()) {
      const Tensor& e = *enc;  // (B, L, C)
      Tensor picked;
      if (e.size(0) == 1) {
        const int64_t at_pos = (*anchors)[0][anchor_col].item<int64_t>();
        picked = e[0].narrow(0, at_pos, 1);  // (1, C)
      } else {
        picked = e.gather(1, anchors->select(1, anchor_col).view({-1, 1, 1}).expand({-1, 1, e.size(2)})).select(1, 0);  // (B, C)
      }
      Tensor aligned = align_b_.has_value() ? linear(picked, *align_w_t_, *align_b_) : picked.mm(*align_w_t_);  // (B, C)
      x = x + aligned.unsqueeze(1);
    }
    if (style.has_value()) {
      x = x + *style;  // (B, 1, C)
    }
    return x;
  }

  std::vector<std::vector<Tensor>> weights_;
  std::vector<Tensor> tables_;
  int64_t max_in_bar_;
  c10::optional<Tensor> align_w_t_, align_b_;
  int64_t heads_;
  double eps_;
  Tensor final_w_, final_b_;
  double final_eps_;
  int64_t vocab_;
};

// sampler.Draw.__call__ on a plain step with columns, then sampler.multinomial_columns: (B, 1, V)
// logits, (K,) ascending columns -> (B,) tokens, drawn from torch's default generator as
// torch.multinomial draws them. The softmax, exp and log1p stay ATen's (vectorised: their rounding is
// theirs); the exact IEEE steps between them (mask, int -> double, the power-of-two scale, double ->
// float, division, NaN/inf -> finite, the first minimum) run as two plain loops over the K columns.
Tensor draw_columns(Tensor logits, const Tensor& columns, double temperature) {
  if (temperature != 1.0) {
    logits = logits / temperature;
  }
  Tensor lprobs = at::log_softmax(logits, -1, at::kFloat).select(1, -1);  // (B, V)
  Tensor probs = lprobs.index_select(1, columns).exp_().contiguous();  // (B, K)
  const int64_t rows = probs.size(0), k = probs.size(1), vocab = lprobs.size(1);
  Tensor bits = at::empty({rows, vocab}, probs.options().dtype(at::kLong)).random_();  // (B, V)
  Tensor cols = columns.contiguous();
  const int64_t* col = cols.data_ptr<int64_t>();
  const int64_t* bit = bits.data_ptr<int64_t>();
  Tensor minus_u = at::empty({rows, k}, probs.options().dtype(at::kDouble));  // (B, K) in (-1, 0]
  double* u = minus_u.data_ptr<double>();
  const int64_t mask53 = (int64_t{1} << 53) - 1;
  const double minus_scale = -std::pow(2.0, -53);  // exact: a power of two
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < k; ++j) {
      u[r * k + j] = static_cast<double>(bit[r * vocab + col[j]] & mask53) * minus_scale;
    }
  }
  Tensor minus_q = at::log1p(minus_u);  // (B, K) double: -q, q ~ Exp(1)
  const double* q = minus_q.data_ptr<double>();
  const float* p = probs.data_ptr<float>();
  Tensor out = at::empty({rows}, cols.options());  // (B,)
  int64_t* chosen = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    float best = 0.0f;
    int64_t at = 0;
    for (int64_t j = 0; j < k; ++j) {
      float ratio = p[r * k + j] / static_cast<float>(q[r * k + j]);  // -p / q
      if (std::isnan(ratio)) {
        ratio = 0.0f;  // nan_to_num_(0.0)
      } else if (std::isinf(ratio)) {
        ratio = ratio > 0 ? std::numeric_limits<float>::max() : std::numeric_limits<float>::lowest();
      }
      if (j == 0 || ratio < best) {  // torch.min: the first minimum
        best = ratio;
        at = j;
      }
    }
    TORCH_CHECK(k > 0 && best < 0, "invalid multinomial distribution (sum of probabilities <= 0)");
    chosen[r] = col[at];
  }
  return out;
}

// ------------------------------------------------------------------ the decoding rules' arithmetic
// decoding/functions.py, operator for operator (a Python float over a tensor is Tensor.__rtruediv__:
// the reciprocal times the float).

// functions.key_down_floor: (B, 1, V) logits, (V,) log2 ratios, (B,) notated quarters, (B,) s per quarter
Tensor key_down_floor(const Tensor& logits, const Tensor& value, const Tensor& nominal_q, const Tensor& period_s,
                      double min_key_down_s, double forceable_logit) {
  Tensor allowed = at::isfinite(logits) & at::isfinite(value);  // (B, 1, V)
  Tensor longest = value.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity()).amax(-1);  // (B, 1)
  Tensor floor = at::log2(at::reciprocal(nominal_q * period_s) * min_key_down_s).unsqueeze(1);  // (B, 1)
  floor = at::minimum(floor, longest);  // (B, 1)
  Tensor too_short = allowed & (value < floor.unsqueeze(-1) - 1e-6);  // (B, 1, V)
  return logits.masked_fill(too_short, forceable_logit);
}

// functions.tempo_level_update: (B, 4) level state, (B,) period, gap, scale -> (B, 4)
Tensor tempo_level_update(const Tensor& level, const Tensor& period_s, const Tensor& gap_q, const Tensor& scale,
                          double tau_q) {
  Tensor use = at::isfinite(gap_q) & (gap_q > 0) & at::isfinite(period_s);  // (B,)
  Tensor gap = at::where(use, gap_q, at::zeros_like(gap_q));  // (B,)
  Tensor secs = gap * at::where(use, period_s * scale, at::zeros_like(period_s));  // (B,)
  Tensor decay = at::exp(gap.neg() / tau_q);  // (B,)
  return at::stack({level.select(1, 0) * decay + secs, level.select(1, 1) * decay + gap,
                    level.select(1, 2) + secs, level.select(1, 3) + gap}, 1);  // (B, 4)
}

namespace {

// functions.band_reference
Tensor band_reference(const Tensor& level, const c10::optional<Tensor>& ref) {
  return ref.has_value() ? *ref : level.select(1, 2) / level.select(1, 3).clamp_min(1e-9);
}

// functions.tempo_band_excess
Tensor tempo_band_excess(const Tensor& level, double band_bins, double bin_log, const c10::optional<Tensor>& ref) {
  Tensor window = level.select(1, 0) / level.select(1, 1).clamp_min(1e-9);  // (B,)
  Tensor dev = at::log(window.clamp_min(1e-9) / band_reference(level, ref).clamp_min(1e-9)) / bin_log;  // (B,)
  return at::sign(dev) * (dev.abs() - band_bins).clamp_min(0.0);
}

// functions.apply_prior: (B, 1, V) logits, (B, V) penalty
Tensor apply_prior(const Tensor& logits, Tensor penalty, double max_penalty) {
  Tensor candidate = at::isfinite(logits.select(1, 0)) & at::isfinite(penalty);  // (B, V)
  Tensor not_candidate = candidate.logical_not();
  Tensor least = penalty.masked_fill(not_candidate, std::numeric_limits<double>::infinity()).amin(-1, true);  // (B, 1)
  penalty = (penalty - least.clamp_max(1e30)).nan_to_num(0.0, 0.0, 0.0);  // (B, V)
  penalty = penalty.masked_fill(not_candidate, 0.0).clamp(0.0, max_penalty);  // (B, V)
  return logits - penalty.unsqueeze(1).to(logits.scalar_type());  // (B, 1, V)
}

}  // namespace

// functions.tempo_band_penalty: (B, 1, V) logits, (V,) periods, (B, 4) level, (B,) gap and scale
Tensor tempo_band_penalty(const Tensor& logits, const Tensor& period_s, const Tensor& level, const Tensor& gap_q,
                          const Tensor& scale, double band_bins, double bin_log, double warmup_q, double gain,
                          double max_curve, const c10::optional<Tensor>& ref, double max_penalty) {
  Tensor use = at::isfinite(gap_q) & (gap_q > 0) & (level.select(1, 3) >= warmup_q);  // (B,)
  Tensor curve = (tempo_band_excess(level, band_bins, bin_log, ref).abs() * gain).clamp_max(max_curve);  // (B,)
  curve = at::where(use & at::isfinite(curve), curve, at::zeros_like(curve));  // (B,)
  if (!(curve != 0).any().item<bool>()) {
    return logits;
  }
  Tensor reference = band_reference(level, ref);  // (B,)
  Tensor dist = at::log(period_s.unsqueeze(0) * scale.unsqueeze(1) / reference.unsqueeze(1)) / bin_log;  // (B, V)
  return apply_prior(logits, curve.unsqueeze(1) * dist.square(), max_penalty);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("layer_step", &layer_step, "incremental.layer_step on a step that opens no bar");
  pybind11::class_<SameBarStep>(m, "SameBarStep")
      .def(pybind11::init<std::vector<std::vector<Tensor>>, std::vector<Tensor>, int64_t, c10::optional<Tensor>,
                          c10::optional<Tensor>, int64_t, double, Tensor, Tensor, double, int64_t>())
      .def("__call__", &SameBarStep::operator(), "the decoder's generation step on a step that opens no bar");
  m.def("draw_columns", &draw_columns, "sampler.Draw on a plain step with columns");
  m.def("key_down_floor", &key_down_floor, "decoding.functions.key_down_floor");
  m.def("tempo_level_update", &tempo_level_update, "decoding.functions.tempo_level_update");
  m.def("tempo_band_penalty", &tempo_band_penalty, "decoding.functions.tempo_band_penalty");
}
