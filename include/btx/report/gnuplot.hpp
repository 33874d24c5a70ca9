// SPDX-License-Identifier: MIT
// Pictures for run reports through gnuplot (Debian's gnuplot-nox): loss curves and
// heatmaps as PNG files. Data and script are written next to the picture so a person can
// re-plot by hand; a missing gnuplot is reported, never fatal to a training run.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <btx/version.hpp>

namespace btx {
BTX_NAMESPACE_BEGIN

namespace detail {
inline std::string gnuplot_quote(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}
// Runs `gnuplot script`; returns false (and says why on stderr) when it fails.
inline bool run_gnuplot(const std::filesystem::path& script) {
  const std::string cmd = "gnuplot \"" + gnuplot_quote(script.string()) + "\" 2>>\"" +
                          gnuplot_quote(script.string()) + ".log\"";
  if (std::system(cmd.c_str()) != 0) {
    std::fprintf(stderr, "warning: gnuplot failed on %s (see %s.log); the data file remains\n",
                 script.c_str(), script.c_str());
    return false;
  }
  return true;
}
}  // namespace detail

// One line per named series of (x, y) points.
using Series = std::map<std::string, std::vector<std::pair<double, double>>>;

inline bool plot_lines(const std::filesystem::path& png, const std::string& title,
                       const std::string& xlabel, const std::string& ylabel, const Series& series) {
  const auto data = std::filesystem::path(png).replace_extension(".dat");
  const auto script = std::filesystem::path(png).replace_extension(".gp");
  {
    std::ofstream d(data);
    for (const auto& [name, points] : series) {
      d << "# " << name << "\n";
      for (const auto& [x, y] : points) d << x << " " << y << "\n";
      d << "\n\n";  // gnuplot data block separator (index)
    }
  }
  std::ofstream g(script);
  g << "set terminal pngcairo noenhanced size 1000,600\nset output \""
    << detail::gnuplot_quote(png.string()) << "\"\nset title \"" << detail::gnuplot_quote(title)
    << "\"\nset xlabel \"" << detail::gnuplot_quote(xlabel) << "\"\nset ylabel \""
    << detail::gnuplot_quote(ylabel) << "\"\nset key outside right\nset grid\nplot ";
  int index = 0;
  for (const auto& [name, points] : series) {
    if (index > 0) g << ", ";
    g << "\"" << detail::gnuplot_quote(data.string()) << "\" index " << index
      << " with lines lw 2 title \"" << detail::gnuplot_quote(name) << "\"";
    ++index;
  }
  g << "\n";
  g.close();
  return detail::run_gnuplot(script);
}

// values[r][c] shown as a coloured grid with the number printed in each cell.
inline bool plot_heatmap(const std::filesystem::path& png, const std::string& title,
                         const std::vector<std::string>& rows, const std::vector<std::string>& cols,
                         const std::vector<std::vector<double>>& values) {
  const auto data = std::filesystem::path(png).replace_extension(".dat");
  const auto script = std::filesystem::path(png).replace_extension(".gp");
  {
    std::ofstream d(data);
    for (size_t r = 0; r < rows.size(); ++r) {
      for (size_t c = 0; c < cols.size(); ++c) d << c << " " << r << " " << values[r][c] << "\n";
      d << "\n";
    }
  }
  std::ofstream g(script);
  g << "set terminal pngcairo noenhanced size " << 300 + 110 * cols.size() << ","
    << 200 + 40 * rows.size() << "\nset output \"" << detail::gnuplot_quote(png.string())
    << "\"\nset title \"" << detail::gnuplot_quote(title)
    << "\"\nset cbrange [0:1]\nset palette defined (0 \"white\", 1 \"#08306b\")\n"
    << "set xrange [-0.5:" << double(cols.size()) - 0.5 << "]\nset yrange ["
    << double(rows.size()) - 0.5 << ":-0.5]\nset xtics (";
  for (size_t c = 0; c < cols.size(); ++c) {
    g << (c ? ", " : "") << "\"" << detail::gnuplot_quote(cols[c]) << "\" " << c;
  }
  g << ")\nset ytics (";
  for (size_t r = 0; r < rows.size(); ++r) {
    g << (r ? ", " : "") << "\"" << detail::gnuplot_quote(rows[r]) << "\" " << r;
  }
  g << ")\nplot \"" << detail::gnuplot_quote(data.string())
    << "\" using 1:2:3 with image notitle, \"\" using 1:2:(sprintf(\"%.2f\",$3)) with labels "
       "notitle\n";
  g.close();
  return detail::run_gnuplot(script);
}

BTX_NAMESPACE_END
}  // namespace btx
