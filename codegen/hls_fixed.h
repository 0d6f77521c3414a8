// honer's fixed-point type for HLS C++: the arithmetic of Vitis HLS's ap_fixed<W, I, Q, O>
// for the modes honer emits (quantization AP_TRN / AP_RND, overflow AP_WRAP / AP_SAT), in plain
// C++ so that C simulation needs no vendor headers. A value is raw / 2^(W - I) with raw a
// W-bit two's complement integer.
#ifndef HONER_FIXED_H
#define HONER_FIXED_H

#include <cmath>
#include <cstdint>

template <int W, int I, bool RND, bool SAT>
struct hfix {
  static_assert(W >= 2 && W <= 32, "hfix holds 2 to 32 bits");
  static const int F = W - I;  // fractional bits
  int32_t raw;

  // The overflow mode applied to a wide integer in this type's scale.
  static int32_t fit(int64_t r) {
    const int64_t hi = (int64_t(1) << (W - 1)) - 1, lo = -(int64_t(1) << (W - 1));
    if (SAT) return int32_t(r > hi ? hi : (r < lo ? lo : r));
    const uint64_t mask = (W == 64) ? ~uint64_t(0) : ((uint64_t(1) << W) - 1);
    uint64_t u = uint64_t(r) & mask;  // keep the low W bits, then sign-extend
    if (u >> (W - 1)) u |= ~mask;
    return int32_t(int64_t(u));
  }
  // The quantization mode applied when dropping `shift` fractional bits.
  static int64_t drop_bits(int64_t r, int shift) {
    if (shift <= 0) return r * (int64_t(1) << -shift);
    if (RND) r += int64_t(1) << (shift - 1);  // round half up, as AP_RND
    return r >> shift;  // arithmetic shift: floor, as AP_TRN
  }
  static hfix from_raw(int64_t r) { hfix v; v.raw = fit(r); return v; }
  static hfix from_float(float f) {
    const double scaled = double(f) * double(int64_t(1) << F);
    const double q = RND ? std::floor(scaled + 0.5) : std::floor(scaled);
    const double bound = 4.0e18;  // keeps the cast defined; fit() then wraps or saturates
    return from_raw(int64_t(q > bound ? bound : (q < -bound ? -bound : q)));
  }
  float to_float() const { return float(double(raw) / double(int64_t(1) << F)); }
};

// Accumulator of products of two hfix values: exact (2F fractional bits in 64 bits).
template <class T>
struct hacc {
  int64_t raw;
  static hacc from(T bias) { hacc a; a.raw = int64_t(bias.raw) * (int64_t(1) << T::F); return a; }
  void mac(T x, T w) { raw += int64_t(x.raw) * int64_t(w.raw); }
  T out() const { return T::from_raw(T::drop_bits(raw, T::F)); }
};

#endif  // HONER_FIXED_H
