/* PNG rows to segment ids or runs: the filters of PNG specification section 9, run starts. */
#include "pngids.h"

static inline uint8_t paeth(int a, int b, int c) {
    int p = a + b - c;
    int pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    if (pa <= pb && pa <= pc) return (uint8_t)a;
    if (pb <= pc) return (uint8_t)b;
    return (uint8_t)c;
}

static inline uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline int all_zero(const uint8_t *p, Py_ssize_t n) {
    /* Early exit: rows that change usually do so well before their end. */
    Py_ssize_t i = 0;
    for (; i + 32 <= n; i += 32)
        if (load64(p + i) | load64(p + i + 8) | load64(p + i + 16) | load64(p + i + 24)) return 0;
    for (; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

/* 16-bit mask of the bytes where a[0..16) and b[0..16) differ. */
static inline unsigned differing16(const uint8_t *a, const uint8_t *b) {
#if defined(__SSE2__)
    return ~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)a),
                                                       _mm_loadu_si128((const __m128i *)b))) & 0xFFFFu;
#else
    unsigned mask = 0;
    for (int k = 0; k < 16; k++) mask |= (unsigned)(a[k] != b[k]) << k;
    return mask;
#endif
}

static inline int ctz64(uint64_t x) {
#if defined(__GNUC__)
    return __builtin_ctzll(x);
#else
    int n = 0;
    while (!(x & 1)) {
        x >>= 1;
        n++;
    }
    return n;
#endif
}


/* p[0..bpp) == q[0..bpp) for the 3 or 4 bytes of a pixel. */
static inline int same_bytes(const uint8_t *p, const uint8_t *q, int bpp) {
    return p[0] == q[0] && p[1] == q[1] && p[2] == q[2] && (bpp == 3 || p[3] == q[3]);
}

/* Number of leading zero bytes of p[0..n). */
static inline Py_ssize_t zero_run(const uint8_t *p, Py_ssize_t n) {
    Py_ssize_t i = 0;
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16) {
        unsigned nonzero = ~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + i)), zero)) & 0xFFFFu;
        if (nonzero) return i + __builtin_ctz(nonzero);
    }
#endif
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (w) break;
    }
    while (i < n && !p[i]) i++;
    return i;
}

/* Undo one row's filter in place: `row` holds the filtered bytes, `prev` the previous
 * reconstructed row (zeros for the first). Returns 0, or -1 for an unknown filter type. */
static ALWAYS_INLINE int unfilter_row(uint8_t *row, const uint8_t *in, const uint8_t *prev, Py_ssize_t n,
                                      int bpp, int type) {
    /* row = the reconstructed bytes of the filtered bytes `in`, given the previous reconstructed row. */
    Py_ssize_t i;
    switch (type) {
    case 0:
        memcpy(row, in, (size_t)n);
        return 0;
    case 1:
        for (i = 0; i < bpp && i < n; i++) row[i] = in[i];
        while (i < n) {
            /* Zero differences repeat the pixel to the left: fill the stretch from that one pixel, so
             * the bytes do not wait on each other. */
            Py_ssize_t end = i + zero_run(in + i, n - i) / bpp * bpp;
            for (const uint8_t *left = row + i - bpp; i < end; i += bpp) memcpy(row + i, left, (size_t)bpp);
            for (Py_ssize_t stop = i + bpp < n ? i + bpp : n; i < stop; i++) row[i] = (uint8_t)(in[i] + row[i - bpp]);
        }
        return 0;
    case 2:
        for (i = 0; i < n; i++) row[i] = (uint8_t)(in[i] + prev[i]);
        return 0;
    case 3:
        for (i = 0; i < bpp && i < n; i++) row[i] = (uint8_t)(in[i] + (prev[i] >> 1));
        for (; i < n; i++) row[i] = (uint8_t)(in[i] + ((row[i - bpp] + prev[i]) >> 1));
        return 0;
    case 4:
        for (i = 0; i < bpp && i < n; i++) row[i] = (uint8_t)(in[i] + prev[i]);
        while (i < n) {
            if (same_bytes(row + i - bpp, prev + i - bpp, bpp)) {
                /* The pixel to the left equals the one above it (a == c), so the predictor is the byte
                 * above; with zero differences the row goes on equal to the row above, which is copied
                 * for the whole zero stretch. */
                Py_ssize_t end = i + zero_run(in + i, n - i) / bpp * bpp;
                memcpy(row + i, prev + i, (size_t)(end - i));
                i = end;
            } else if (same_bytes(prev + i, prev + i - bpp, bpp)) {
                /* The pixel above equals the one above-left (b == c), so the predictor is the pixel to
                 * the left: while the row above stays constant and the differences are zero, the left
                 * pixel repeats (a horizontal edge between two segments). */
                Py_ssize_t zeros = i + zero_run(in + i, n - i) / bpp * bpp, end = i;
                while (end < zeros && same_bytes(prev + end, prev + end - bpp, bpp)) end += bpp;
                for (const uint8_t *left = row + i - bpp; i < end; i += bpp) memcpy(row + i, left, (size_t)bpp);
            }
            if (i >= n) break;
            for (Py_ssize_t stop = i + bpp; i < stop; i++) {
                uint8_t a = row[i - bpp], b = prev[i], c = prev[i - bpp];
                row[i] = (uint8_t)(in[i] + (a == c ? b : b == c ? a : paeth(a, b, c)));
            }
        }
        return 0;
    default:
        return -1;
    }
}

static inline uint32_t pixel_id(const uint8_t *px) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint32_t v;
    memcpy(&v, px, 4); /* the row buffer has one byte of slack past its end */
    return v & 0xFFFFFFu;
#else
    return (uint32_t)px[0] | ((uint32_t)px[1] << 8) | ((uint32_t)px[2] << 16);
#endif
}


/* Undo the filters of `rows` rows starting at image row `first_row` and emit them to `sink`. `prev`
 * holds the previous reconstructed row (zeros before row 0); `cur` is scratch of stride + 1 bytes. */
static ALWAYS_INLINE int decode_rows_for(const uint8_t *src, Py_ssize_t rows, Py_ssize_t first_row, Py_ssize_t width,
                       int channels, uint8_t *carried, uint8_t *scratch, RowSink *sink, Py_ssize_t *bad_row,
                       int *bad_type) {
    Py_ssize_t stride = width * channels;
    /* Rows are reconstructed alternately into the two halves of `scratch` (each stride + 1 bytes: see
     * pixel_id); the caller's `carried` row is copied in first and the last row back out at the end. */
    uint8_t *prev = scratch, *cur = scratch + stride + 1;
    memcpy(prev, carried, (size_t)stride);
    for (Py_ssize_t y = first_row; y < first_row + rows; y++, src += stride + 1) {
        int type = src[0];
        if (y > 0 && (type == 2 || type == 4) && all_zero(src + 1, stride)) {
            /* An all-zero Up or Paeth row repeats the row above (for Paeth: with left == upper-left
             * the predictor is the byte above, by induction along the row). Segment maps are full of
             * them; `prev` already holds this row. */
            if (sink->ids) {
                memcpy(sink->ids + y * width, sink->ids + (y - 1) * width, (size_t)width * sizeof(uint32_t));
            } else {
                sink->row_begin[y] = sink->row_begin[y - 1];
                sink->row_end[y] = sink->row_end[y - 1];
            }
            continue;
        }
        if (unfilter_row(cur, src + 1, prev, stride, channels, type)) {
            *bad_row = y;
            *bad_type = type;
            memcpy(carried, prev, (size_t)stride);
            return DECODE_BAD_FILTER;
        }
        if (sink->ids) {
            uint32_t *ids = sink->ids + y * width;
            const uint8_t *px = cur;
            for (Py_ssize_t x = 0; x < width; x++, px += channels) ids[x] = pixel_id(px);
        } else {
            Py_ssize_t n = sink->num_runs;
            if (n + width > sink->capacity) return DECODE_FULL;
            sink->row_begin[y] = (int32_t)n;
            /* Pixel x starts a run where one of its bytes differs from the byte `channels` to the left.
             * Windows of 16 whole pixels are compared 16 bytes at a time into a byte mask, which is folded
             * to one bit per pixel (at its first byte); only those bits are visited, one per run start. */
            Py_ssize_t start = 0, window = 16 * channels;
            const uint64_t firsts = channels == 3 ? 0x249249249249ull : 0x1111111111111111ull;
            for (Py_ssize_t base = channels; base < stride; base += window) {
                uint64_t bytes = 0;
                if (base + window <= stride) {
                    for (int q = 0; q < channels; q++)
                        bytes |= (uint64_t)differing16(cur + base + 16 * q, cur + base + 16 * q - channels) << (16 * q);
                } else {
                    for (Py_ssize_t k = base; k < stride; k++)
                        bytes |= (uint64_t)(cur[k] != cur[k - channels]) << (k - base);
                }
                uint64_t pixels = bytes | bytes >> 1 | bytes >> 2;
                if (channels == 4) pixels |= bytes >> 3;
                pixels &= firsts;
                while (pixels) {
                    Py_ssize_t x = (base + (Py_ssize_t)ctz64(pixels)) / channels;
                    pixels &= pixels - 1;
                    sink->run_end[n] = (int32_t)x;
                    sink->run_id[n++] = pixel_id(cur + start * channels);
                    start = x;
                }
            }
            sink->run_end[n] = (int32_t)width;
            sink->run_id[n++] = pixel_id(cur + start * channels);
            sink->row_end[y] = (int32_t)n;
            sink->num_runs = n;
        }
        uint8_t *t = prev;
        prev = cur;
        cur = t;
    }
    memcpy(carried, prev, (size_t)stride);
    return DECODE_OK;
}

/* decode_rows_for with the channel count as a constant (3 or 4), so that per-pixel arithmetic and the
 * filters' byte offsets compile to fixed strides. */
int decode_rows(const uint8_t *src, Py_ssize_t rows, Py_ssize_t first_row, Py_ssize_t width, int channels,
                       uint8_t *carried, uint8_t *scratch, RowSink *sink, Py_ssize_t *bad_row, int *bad_type) {
    if (channels == 3) return decode_rows_for(src, rows, first_row, width, 3, carried, scratch, sink, bad_row, bad_type);
    return decode_rows_for(src, rows, first_row, width, 4, carried, scratch, sink, bad_row, bad_type);
}

/* Shared argument checks of unfilter_ids / unfilter_runs; returns the number of rows or -1. */
static Py_ssize_t check_rows(const Py_buffer *data, Py_ssize_t width, int channels, const Py_buffer *prev,
                             Py_ssize_t first_row) {
    Py_ssize_t stride = width * channels;
    if (channels != 3 && channels != 4) {
        PyErr_Format(PyExc_ValueError, "PNG rows of 3 or 4 channels are handled, got %d", channels);
        return -1;
    }
    if (width <= 0 || data->len % (stride + 1)) {
        PyErr_Format(PyExc_ValueError, "%zd bytes of image data are not whole rows of %zd pixels x %d channels",
                     data->len, width, channels);
        return -1;
    }
    if (prev->len != stride || first_row < 0) {
        PyErr_SetString(PyExc_ValueError, "previous-row buffer of the wrong size, or a negative first row");
        return -1;
    }
    return data->len / (stride + 1);
}

PyObject *finish_decode(int status, Py_ssize_t bad_row, int bad_type) {
    if (status == DECODE_BAD_FILTER)
        PyErr_Format(PyExc_ValueError, "row %zd has unknown PNG filter type %d", bad_row, bad_type);
    else if (status == DECODE_FULL)
        PyErr_SetString(PyExc_ValueError, "run buffers are full; give them height * width entries");
    return NULL;
}

PyObject *unfilter_ids(PyObject *self, PyObject *args) {
    Py_buffer data, prev, out;
    Py_ssize_t width, first_row;
    int channels;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*niw*w*n", &data, &width, &channels, &prev, &out, &first_row)) return NULL;
    PyObject *result = NULL;
    uint8_t *cur = NULL;
    Py_ssize_t rows = check_rows(&data, width, channels, &prev, first_row);
    if (rows < 0) goto done;
    if (out.len < (first_row + rows) * width * (Py_ssize_t)sizeof(uint32_t)) {
        PyErr_SetString(PyExc_ValueError, "unfilter_ids: the output buffer is too small");
        goto done;
    }
    cur = calloc(2 * ((size_t)(width * channels) + 1), 1); /* decode_rows' scratch */
    if (!cur) {
        PyErr_NoMemory();
        goto done;
    }
    RowSink sink = {out.buf, NULL, NULL, NULL, NULL, 0, 0};
    Py_ssize_t bad_row = -1;
    int bad_type = 0, status;
    Py_BEGIN_ALLOW_THREADS
    status = decode_rows(data.buf, rows, first_row, width, channels, prev.buf, cur, &sink, &bad_row, &bad_type);
    Py_END_ALLOW_THREADS
    result = status == DECODE_OK ? PyLong_FromSsize_t(rows) : finish_decode(status, bad_row, bad_type);
done:
    free(cur);
    PyBuffer_Release(&data);
    PyBuffer_Release(&prev);
    PyBuffer_Release(&out);
    return result;
}

PyObject *unfilter_runs(PyObject *self, PyObject *args) {
    Py_buffer data, prev, row_begin, row_end, run_end, run_id;
    Py_ssize_t width, first_row, num_runs;
    int channels;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*niw*nw*w*w*w*n", &data, &width, &channels, &prev, &first_row, &row_begin,
                          &row_end, &run_end, &run_id, &num_runs))
        return NULL;
    PyObject *result = NULL;
    uint8_t *cur = NULL;
    Py_ssize_t rows = check_rows(&data, width, channels, &prev, first_row);
    if (rows < 0) goto done;
    Py_ssize_t capacity = run_end.len / (Py_ssize_t)sizeof(int32_t);
    if (row_begin.len != row_end.len || row_begin.len < (first_row + rows) * (Py_ssize_t)sizeof(int32_t) ||
        run_id.len != capacity * (Py_ssize_t)sizeof(uint32_t) || num_runs < 0 || num_runs > capacity ||
        (first_row > 0 && ((int32_t *)row_end.buf)[first_row - 1] > num_runs)) {
        PyErr_SetString(PyExc_ValueError, "unfilter_runs: row or run buffers of the wrong size");
        goto done;
    }
    cur = calloc(2 * ((size_t)(width * channels) + 1), 1); /* decode_rows' scratch */
    if (!cur) {
        PyErr_NoMemory();
        goto done;
    }
    RowSink sink = {NULL, row_begin.buf, row_end.buf, run_end.buf, run_id.buf, num_runs, capacity};
    Py_ssize_t bad_row = -1;
    int bad_type = 0, status;
    Py_BEGIN_ALLOW_THREADS
    status = decode_rows(data.buf, rows, first_row, width, channels, prev.buf, cur, &sink, &bad_row, &bad_type);
    Py_END_ALLOW_THREADS
    result = status == DECODE_OK ? PyLong_FromSsize_t(sink.num_runs) : finish_decode(status, bad_row, bad_type);
done:
    free(cur);
    PyBuffer_Release(&data);
    PyBuffer_Release(&prev);
    PyBuffer_Release(&row_begin);
    PyBuffer_Release(&row_end);
    PyBuffer_Release(&run_end);
    PyBuffer_Release(&run_id);
    return result;
}

