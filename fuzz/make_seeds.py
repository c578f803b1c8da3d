"""Write the fuzzer's seed corpus (fuzz/seeds/): tiny valid images of every format and
mode vit-batch decodes, each prefixed with the harness's two selector bytes (file
extension, preprocessing config). Needs Pillow; run once, the output is committed.

    python fuzz/make_seeds.py
"""
import io
import os

from PIL import Image

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
os.makedirs(out, exist_ok=True)
EXT = {"jpg": 0, "png": 1, "gif": 2, "bmp": 3, "webp": 4, "tif": 5}


def rgb(w, h):
    im = Image.new("RGB", (w, h))
    im.putdata([((x * 37) % 256, (y * 53) % 256, ((x + y) * 11) % 256) for y in range(h) for x in range(w)])
    return im


def save(name, ext, sel, im, **kw):
    buf = io.BytesIO()
    im.save(buf, format={"jpg": "JPEG", "tif": "TIFF"}.get(ext, ext.upper()), **kw)
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([EXT[ext], sel]) + buf.getvalue())


base = rgb(12, 9)
save("jpeg_baseline", "jpg", 0x03, base, quality=80)
save("jpeg_progressive", "jpg", 0x83, base, quality=80, progressive=True)
save("jpeg_gray", "jpg", 0x0e, base.convert("L"))
save("jpeg_cmyk", "jpg", 0x02, base.convert("CMYK"))
save("png_rgb", "png", 0x01, base)
save("png_rgba", "png", 0x05, base.convert("RGBA"))
save("png_la", "png", 0x09, base.convert("LA"))
save("png_palette", "png", 0x0d, base.convert("P"))
save("png_gray16", "png", 0x11, base.convert("L").point(lambda v: v * 200, "I").convert("I;16"))
save("png_1x1", "png", 0x83, rgb(1, 1))
save("png_wide", "png", 0x92, rgb(64, 1))
save("gif_animated", "gif", 0x03, base.convert("P"), save_all=True, append_images=[rgb(12, 9).rotate(90).convert("P")])
save("bmp_rgb", "bmp", 0x07, base)
save("webp_lossy", "webp", 0x03, base, quality=70)
save("webp_lossless", "webp", 0x87, base, lossless=True)
save("tiff_rgb", "tif", 0x13, base)
save("tiff_gray16", "tif", 0x02, base.convert("I;16"))
print(f"wrote {len(os.listdir(out))} seeds to {out}")
