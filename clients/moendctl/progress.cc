#include "clients/moendctl/progress.h"

#include <unistd.h>

#include <cstdio>

namespace moend::ctl {

ProgressBar::ProgressBar(std::string label)
    : label_(std::move(label)), tty_(::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()) {}

void ProgressBar::Update(int64_t done, int64_t total) {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double frac = total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  const double left = done > 0 ? elapsed / static_cast<double>(done) * (total - done) : 0.0;
  constexpr int kWidth = 30;
  std::string bar(static_cast<size_t>(frac * kWidth), '#');
  bar.resize(kWidth, '.');
  std::fprintf(stderr, "%s%s [%s] %lld/%lld  %.1f s elapsed, ~%.0f s left%s", tty_ ? "\r" : "",
               label_.c_str(), bar.c_str(), static_cast<long long>(done),
               static_cast<long long>(total), elapsed, left, tty_ ? "\033[K" : "\n");
  std::fflush(stderr);
}

void ProgressBar::Finish() {
  if (tty_) std::fprintf(stderr, "\n");
}

}  // namespace moend::ctl
