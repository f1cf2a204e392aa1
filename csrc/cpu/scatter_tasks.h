// The race-free task split of the CPU scatters into the bordered input gradient: (image, channel slice) blocks of a chunk.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "cpu/sample_table.h"

namespace deformconv {
namespace cpu {

// Tasks own (image, channel slice) pairs of a chunk of output pixels, which never
// write the same element of grad_bordered: no races, and each element sums in
// pixel-then-tap order whatever the thread count. With enough images, whole images
// per task; else one channel slice per thread over all of the chunk's images,
// slice-major, so each thread gets the same share even when the chunk's images hold
// very different pixel counts (a chunk often ends inside an image).
struct ScatterTasks {
  // One task: image n, channels [c_lo, c_hi), chunk rows [q_begin, q_end).
  struct Task {
    int64_t n, c_lo, c_hi, q_begin, q_end;
  };

  ScatterTasks(const Layout& L, int64_t p_begin, int64_t chunk)
      : channels(L.geo.in_channels),
        hw_out(L.geo.out_pixels()),
        p_begin(p_begin),
        chunk(chunk),
        first_image(p_begin / hw_out),
        images((p_begin + chunk - 1) / hw_out - first_image + 1) {
    const int64_t threads = at::get_num_threads();
    slices = images >= 2 * threads ? 1 : std::min<int64_t>(channels, threads);
  }

  int64_t count() const { return images * slices; }
  // at::parallel_for grain: one slice's images stay on one thread.
  int64_t grain() const { return slices == 1 ? 1 : images; }

  Task task(int64_t t) const {
    const int64_t slice = t / images;
    const int64_t n = first_image + t % images;
    return {n, channels * slice / slices, channels * (slice + 1) / slices,
            std::max<int64_t>(0, n * hw_out - p_begin),
            std::min<int64_t>(chunk, (n + 1) * hw_out - p_begin)};
  }

 private:
  int64_t channels, hw_out, p_begin, chunk, first_image, images, slices;
};

}  // namespace cpu
}  // namespace deformconv
