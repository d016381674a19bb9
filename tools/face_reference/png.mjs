// Shared by the reference scripts: the sha256 of a buffer and a minimal PNG decoder (so the pixels fed to tfjs are
// exactly the PNG's, with no image library in between; the Python tests check the decoded pixels' sha256).
import { createHash } from 'node:crypto';
import { inflateSync } from 'node:zlib';

export const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');

// Minimal PNG decoder: 8-bit RGB (colour type 2), non-interlaced; all five scanline filters.
export function decodePng(buf, file) {
  const sig = '89504e470d0a1a0a';
  if (buf.subarray(0, 8).toString('hex') !== sig) throw new Error(`${file}: not a PNG`);
  let pos = 8; let width; let height; const idat = [];
  while (pos < buf.length) {
    const len = buf.readUInt32BE(pos); const type = buf.toString('ascii', pos + 4, pos + 8);
    const data = buf.subarray(pos + 8, pos + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0); height = data.readUInt32BE(4);
      const [depth, colour, , , interlace] = data.subarray(8, 13);
      if (depth !== 8 || colour !== 2 || interlace !== 0) {
        throw new Error(`${file}: expected 8-bit RGB non-interlaced PNG, got depth ${depth} colour type ${colour} interlace ${interlace}`);
      }
    } else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') break;
    pos += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat)); const bpp = 3; const stride = width * bpp;
  const out = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]; const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let i = 0; i < stride; i++) {
      const a = i >= bpp ? out[y * stride + i - bpp] : 0;
      const b = y > 0 ? out[(y - 1) * stride + i] : 0;
      const c = y > 0 && i >= bpp ? out[(y - 1) * stride + i - bpp] : 0;
      let pred;
      if (filter === 0) pred = 0;
      else if (filter === 1) pred = a;
      else if (filter === 2) pred = b;
      else if (filter === 3) pred = (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c; const pa = Math.abs(p - a); const pb = Math.abs(p - b); const pc = Math.abs(p - c);
        pred = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else throw new Error(`${file}: unknown PNG filter ${filter}`);
      out[y * stride + i] = (line[i] + pred) & 0xff;
    }
  }
  return { width, height, pixels: out };
}

