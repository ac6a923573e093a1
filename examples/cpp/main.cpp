// graft_classify: print the top-1 class of one image with a model.pt2 from `graft export`.
//
//   graft_classify model.pt2 image.ppm
//
// The image is a binary PPM (P6, RGB) or PGM (P5, grey) file, so no image library is
// needed; exports/README.md shows how to write one with Pillow at the training size and
// resize mode. The input size, channels and class names come from the package metadata.
#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cstdint>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// The next header field of a PPM/PGM file, skipping whitespace and # comments.
std::string header_field(std::istream& in) {
  std::string field;
  while (in >> field && field[0] == '#') {
    std::string rest_of_comment;
    std::getline(in, rest_of_comment);
  }
  if (!in) throw std::runtime_error("truncated PPM/PGM header");
  return field;
}

// A binary PPM (P6) or PGM (P5) file as a uint8 {channels, height, width} tensor.
at::Tensor read_netpbm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  const std::string magic = header_field(in);
  if (magic != "P6" && magic != "P5") {
    throw std::runtime_error(path + " is not a binary PPM (P6) or PGM (P5) file");
  }
  const int64_t channels = magic == "P6" ? 3 : 1;
  const int64_t width = std::stoll(header_field(in));
  const int64_t height = std::stoll(header_field(in));
  if (std::stoll(header_field(in)) != 255) throw std::runtime_error(path + " is not 8-bit");
  in.get();  // the one whitespace byte between the header and the pixels
  at::Tensor pixels = at::empty({height, width, channels}, at::kByte);
  in.read(reinterpret_cast<char*>(pixels.data_ptr<uint8_t>()), pixels.numel());
  if (in.gcount() != pixels.numel()) throw std::runtime_error(path + " is truncated");
  return pixels.permute({2, 0, 1}).contiguous();
}

// RGB {3, H, W} to grey {1, H, W} exactly as Python does it (Pillow's convert("L")): ITU-R
// 601 luma 0.299 R + 0.587 G + 0.114 B in 16-bit fixed point, rounded half up. A plain mean
// would hand a grey model other pixels than it was trained and checked on.
at::Tensor luma(const at::Tensor& rgb) {
  at::Tensor wide = rgb.to(at::kInt);
  at::Tensor sum = wide[0] * 19595 + wide[1] * 38470 + wide[2] * 7471 + 0x8000;
  return sum.div(65536, "floor").to(at::kByte).unsqueeze(0);
}

// The image with the model's channels and size. Making the file at the training size (as
// the README shows) is exact; stretching here is a fallback that ignores the resize mode.
at::Tensor fit_to_model(at::Tensor image, int64_t channels, int64_t size) {
  if (image.size(0) != channels) {
    image = channels == 1 ? luma(image) : image.expand({3, -1, -1});
  }
  if (image.size(1) != size || image.size(2) != size) {
    std::cerr << "note: stretching the " << image.size(2) << "x" << image.size(1)
              << " image to " << size << "x" << size
              << "; write it at that size for the model's own resize mode\n";
    at::Tensor input = image.unsqueeze(0).to(at::kFloat);
    image = at::upsample_bilinear2d(input, {size, size}, false).squeeze(0);
    image = image.round().clamp(0, 255).to(at::kByte);
  }
  return image.unsqueeze(0).contiguous();  // a batch of one
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream stream(text);
  for (std::string line; std::getline(stream, line);) lines.push_back(line);
  return lines;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: graft_classify model.pt2 image.ppm\n";
    return 2;
  }
  try {
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    auto metadata = loader.get_metadata();
    const int64_t size = std::stoll(metadata.at("torchgraft.image_size"));
    const int64_t channels = std::stoll(metadata.at("torchgraft.channels"));
    const auto names = lines_of(metadata.at("torchgraft.display_names"));

    at::Tensor images = fit_to_model(read_netpbm(argv[2]), channels, size);
    at::Tensor probabilities = loader.run({images})[0];
    const int64_t top1 = probabilities.argmax(1).item<int64_t>();
    std::cout << "top-1: " << names.at(top1) << " (" << std::fixed << std::setprecision(6)
              << probabilities[0][top1].item<float>() << ")\n";
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
