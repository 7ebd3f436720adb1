/*
 * omtseg._pngids: the hot loops of panoptic evaluation in C (used by omtseg.io and omtseg.evaluation.pq).
 *
 * Panoptic PNGs (8-bit RGB or RGBA, not interlaced) hold segment ids R + 256 G + 256^2 B. PQ only needs,
 * per image, the pixel count of every (ground truth id, predicted id) pair, so ids are kept as runs of
 * equal ids along rows, never as a dense map:
 *
 *   decoding   the PNG row filters (None, Sub, Up, Average, Paeth; PNG specification section 9) are undone
 *              row by row into two alternating scratch rows; a row whose Up/Paeth differences are all zero
 *              repeats the row above and shares its runs; elsewhere run starts are found 16 bytes at a time.
 *              unfilter_ids / unfilter_runs take inflated rows (Python inflates); inflate_ids / inflate_runs
 *              inflate the zlib stream themselves through zlib-ng's C functions (see load_zlib_ng).
 *   counting   pair_counts_runs merges the two images' runs row by row: each piece between consecutive
 *              run ends is one (gt, pred) pair. Runs are first given dense labels per image, so pieces
 *              add into a (gt label, pred label) grid; very large grids fall back to a hash map, which
 *              pair_counts (dense uint32 maps) uses too.
 *
 * Run layout (PanopticRuns in omtseg.io): row y is runs row_begin[y] .. row_end[y] - 1 (int32); run k
 * ends before column run_end[k] (int32) and has id run_id[k] (uint32). Every function releases the GIL
 * while it works and raises ValueError for inconsistent input. Written for omtseg from the PNG, zlib
 * (RFC 1950) and zlib-ng API documentation; no code taken from elsewhere.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

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

/* Where decoded rows go: a dense id map (`ids` set), or runs: row y is runs row_begin[y] ..
 * row_end[y] - 1, run k covering x < run_end[k] (from the previous run's end) with id run_id[k].
 * A row equal to the row above shares its runs (same begin and end). */
typedef struct {
    uint32_t *ids;
    int32_t *row_begin, *row_end, *run_end;
    uint32_t *run_id;
    Py_ssize_t num_runs, capacity;
} RowSink;

enum { DECODE_OK = 0, DECODE_BAD_FILTER = -1, DECODE_FULL = -2 };

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
static int decode_rows(const uint8_t *src, Py_ssize_t rows, Py_ssize_t first_row, Py_ssize_t width, int channels,
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

static PyObject *finish_decode(int status, Py_ssize_t bad_row, int bad_type) {
    if (status == DECODE_BAD_FILTER)
        PyErr_Format(PyExc_ValueError, "row %zd has unknown PNG filter type %d", bad_row, bad_type);
    else if (status == DECODE_FULL)
        PyErr_SetString(PyExc_ValueError, "run buffers are full; give them height * width entries");
    return NULL;
}

static PyObject *unfilter_ids(PyObject *self, PyObject *args) {
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

static PyObject *unfilter_runs(PyObject *self, PyObject *args) {
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

/* ---- Inflating natively with zlib-ng ----------------------------------------------------------------
 * The zlib-ng Python package (a dependency) links zlib-ng into its extension module and exports its native
 * API (zng_inflateInit2, zng_inflate, zng_inflateEnd). load_zlib_ng(path) resolves those functions from the
 * already-loaded module, so whole images are inflated, unfiltered and turned into runs in one C call: no
 * Python object per piece of inflated data, and the inflated rows stay in a small cache-resident buffer.
 * Without it (another platform, another zlib-ng build) Python inflates piece by piece instead. */
#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#define HAVE_DLOPEN 1
#endif

/* zlib-ng's native stream structure (zlib-ng.h, zlib-ng 2.x ABI). */
typedef struct {
    const uint8_t *next_in;
    uint32_t avail_in;
    size_t total_in;
    uint8_t *next_out;
    uint32_t avail_out;
    size_t total_out;
    const char *msg;
    void *state;
    void *(*zalloc)(void *, unsigned int, unsigned int);
    void (*zfree)(void *, void *);
    void *opaque;
    int data_type;
    uint32_t adler;
    unsigned long reserved;
} ZngStream;

enum { ZNG_OK = 0, ZNG_STREAM_END = 1, ZNG_BUF_ERROR = -5, ZNG_NO_FLUSH = 0, ZNG_FINISH = 4 };

static int32_t (*zng_inflate_init2)(ZngStream *, int32_t) = NULL;
static int32_t (*zng_inflate_step)(ZngStream *, int32_t) = NULL;
static int32_t (*zng_inflate_end)(ZngStream *) = NULL;

static PyObject *load_zlib_ng(PyObject *self, PyObject *args) {
    const char *path;
    (void)self;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
#ifdef HAVE_DLOPEN
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle) {
        const char *(*version)(void) = (const char *(*)(void))dlsym(handle, "zlibng_version");
        void *init = dlsym(handle, "zng_inflateInit2"), *step = dlsym(handle, "zng_inflate");
        void *end = dlsym(handle, "zng_inflateEnd");
        if (version && init && step && end && version()[0] == '2' && version()[1] == '.') {
            zng_inflate_init2 = (int32_t(*)(ZngStream *, int32_t))init;
            zng_inflate_step = (int32_t(*)(ZngStream *, int32_t))step;
            zng_inflate_end = (int32_t(*)(ZngStream *))end;
            Py_RETURN_TRUE;
        }
    }
#endif
    Py_RETURN_FALSE;
}

enum { INFLATE_BAD_STREAM = -3, INFLATE_SHORT = -4 };

/* Inflate a whole PNG zlib stream and decode its rows into `sink`. With a caller's `whole` buffer of at
 * least height * (row bytes) the image is inflated in one call with Z_FINISH, so zlib-ng needs no sliding
 * window (no copies into it); callers reuse that buffer across images, so its pages are touched once.
 * Without one, a few rows at a time go through a small buffer. */
static int inflate_rows(const uint8_t *stream, Py_ssize_t stream_len, Py_ssize_t height, Py_ssize_t width,
                        int channels, uint8_t *whole, Py_ssize_t whole_len, RowSink *sink, Py_ssize_t *bad_row,
                        int *bad_type) {
    Py_ssize_t row_bytes = width * channels + 1;
    int one_call = whole && whole_len >= height * row_bytes;
    Py_ssize_t rows_per_fill = one_call ? height : row_bytes >= 32768 ? 1 : 32768 / row_bytes;
    uint8_t *owned = one_call ? NULL : malloc((size_t)(rows_per_fill * row_bytes));
    uint8_t *buffer = one_call ? whole : owned;
    uint8_t *prev = calloc((size_t)(3 * row_bytes), 1); /* the carried row, then decode_rows' scratch */
    if (!buffer || !prev) {
        free(owned);
        free(prev);
        return -100;
    }
    uint8_t *cur = prev + row_bytes;
    ZngStream zs;
    memset(&zs, 0, sizeof zs);
    int status = DECODE_OK;
    /* The zlib header (2 bytes: deflate, no preset dictionary) is checked here and the deflate data
     * inflated raw (window bits -15): zlib-ng then skips the Adler-32 of the output, 20% of its time;
     * the PNG chunks' CRCs (checked by the caller) already guard the data. */
    if (stream_len < 2 || (stream[0] & 0x0F) != 8 || (stream[0] >> 4) > 7 || (stream[1] & 0x20) ||
        ((stream[0] << 8) | stream[1]) % 31 || zng_inflate_init2(&zs, -15) != ZNG_OK) {
        status = INFLATE_BAD_STREAM;
        goto done_no_end;
    }
    zs.next_in = stream + 2;
    Py_ssize_t remaining_in = stream_len - 2;
    int ended = 0;
    for (Py_ssize_t row = 0; row < height && status == DECODE_OK;) {
        Py_ssize_t rows = height - row < rows_per_fill ? height - row : rows_per_fill;
        zs.next_out = buffer;
        zs.avail_out = (uint32_t)(rows * row_bytes);
        while (zs.avail_out && !ended) {
            if (!zs.avail_in && remaining_in) {
                zs.avail_in = remaining_in > (Py_ssize_t)1 << 30 ? 1u << 30 : (uint32_t)remaining_in;
                remaining_in -= zs.avail_in;
            }
            int32_t z = zng_inflate_step(&zs, one_call && !remaining_in ? ZNG_FINISH : ZNG_NO_FLUSH);
            if (z == ZNG_STREAM_END) {
                ended = 1;
            } else if (z == ZNG_BUF_ERROR && !zs.avail_out) {
                break; /* every row is out; data after them is ignored */
            } else if (z != ZNG_OK || (!zs.avail_in && !remaining_in && zs.avail_out)) {
                status = z == ZNG_OK ? INFLATE_SHORT : INFLATE_BAD_STREAM;
                break;
            }
        }
        if (status != DECODE_OK) break;
        if (zs.avail_out) {
            status = INFLATE_SHORT;
            break;
        }
        status = decode_rows(buffer, rows, row, width, channels, prev, cur, sink, bad_row, bad_type);
        row += rows;
    }
    zng_inflate_end(&zs);
done_no_end:
    free(owned);
    free(prev);
    return status;
}

static PyObject *inflate_error(int status, Py_ssize_t bad_row, int bad_type) {
    if (status == -100) return PyErr_NoMemory();
    if (status == INFLATE_BAD_STREAM) {
        PyErr_SetString(PyExc_ValueError, "the zlib stream of the image data is damaged");
        return NULL;
    }
    if (status == INFLATE_SHORT) {
        PyErr_SetString(PyExc_ValueError, "the zlib stream ends before the image's last row");
        return NULL;
    }
    return finish_decode(status, bad_row, bad_type);
}

static int check_image(Py_ssize_t height, Py_ssize_t width, int channels) {
    if (!zng_inflate_step) {
        PyErr_SetString(PyExc_RuntimeError, "zlib-ng is not loaded; call load_zlib_ng first");
        return -1;
    }
    if (height <= 0 || width <= 0 || (channels != 3 && channels != 4) || width > (1 << 24) ||
        height > (1 << 24)) {
        PyErr_SetString(PyExc_ValueError, "an image of 3 or 4 channels and positive size is needed");
        return -1;
    }
    return 0;
}

static PyObject *inflate_ids(PyObject *self, PyObject *args) {
    Py_buffer stream, out;
    Py_ssize_t height, width;
    int channels;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nniw*", &stream, &height, &width, &channels, &out)) return NULL;
    PyObject *result = NULL;
    if (check_image(height, width, channels)) goto done;
    if (out.len < height * width * (Py_ssize_t)sizeof(uint32_t)) {
        PyErr_SetString(PyExc_ValueError, "inflate_ids: the output buffer is too small");
        goto done;
    }
    RowSink sink = {out.buf, NULL, NULL, NULL, NULL, 0, 0};
    Py_ssize_t bad_row = -1;
    int bad_type = 0, status;
    Py_BEGIN_ALLOW_THREADS
    status = inflate_rows(stream.buf, stream.len, height, width, channels, NULL, 0, &sink, &bad_row, &bad_type);
    Py_END_ALLOW_THREADS
    result = status == DECODE_OK ? Py_NewRef(Py_None) : inflate_error(status, bad_row, bad_type);
done:
    PyBuffer_Release(&stream);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *inflate_runs(PyObject *self, PyObject *args) {
    Py_buffer stream, row_begin, row_end, run_end, run_id, whole = {0};
    Py_ssize_t height, width;
    int channels;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nniw*w*w*w*|w*", &stream, &height, &width, &channels, &row_begin, &row_end,
                          &run_end, &run_id, &whole))
        return NULL;
    PyObject *result = NULL;
    if (check_image(height, width, channels)) goto done;
    Py_ssize_t capacity = run_end.len / (Py_ssize_t)sizeof(int32_t);
    if (row_begin.len < height * (Py_ssize_t)sizeof(int32_t) || row_end.len != row_begin.len ||
        run_id.len != capacity * (Py_ssize_t)sizeof(uint32_t)) {
        PyErr_SetString(PyExc_ValueError, "inflate_runs: row or run buffers of the wrong size");
        goto done;
    }
    RowSink sink = {NULL, row_begin.buf, row_end.buf, run_end.buf, run_id.buf, 0, capacity};
    Py_ssize_t bad_row = -1;
    int bad_type = 0, status;
    Py_BEGIN_ALLOW_THREADS
    status = inflate_rows(stream.buf, stream.len, height, width, channels, whole.buf, whole.buf ? whole.len : 0,
                          &sink, &bad_row, &bad_type);
    Py_END_ALLOW_THREADS
    result = status == DECODE_OK ? PyLong_FromSsize_t(sink.num_runs) : inflate_error(status, bad_row, bad_type);
done:
    PyBuffer_Release(&stream);
    PyBuffer_Release(&row_begin);
    PyBuffer_Release(&row_end);
    PyBuffer_Release(&run_end);
    PyBuffer_Release(&run_id);
    if (whole.buf) PyBuffer_Release(&whole);
    return result;
}

/* Open-addressing hash map from a pair code to its pixel count. Codes are < 2^48, so UINT64_MAX
 * marks an empty slot. */
typedef struct {
    uint64_t *keys;
    int64_t *counts;
    size_t mask, size;
} PairMap;

static inline size_t slot_of(uint64_t key, size_t mask) {
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & mask;
}

static int map_init(PairMap *m, size_t capacity) {
    m->keys = malloc(capacity * sizeof(uint64_t));
    m->counts = calloc(capacity, sizeof(int64_t));
    if (!m->keys || !m->counts) return -1;
    memset(m->keys, 0xFF, capacity * sizeof(uint64_t));
    m->mask = capacity - 1;
    m->size = 0;
    return 0;
}

static void map_free(PairMap *m) {
    free(m->keys);
    free(m->counts);
}

static int map_add(PairMap *m, uint64_t key, int64_t count);

static int map_grow(PairMap *m) {
    PairMap bigger;
    if (map_init(&bigger, 2 * (m->mask + 1))) {
        map_free(&bigger);
        return -1;
    }
    for (size_t i = 0; i <= m->mask; i++)
        if (m->keys[i] != UINT64_MAX) map_add(&bigger, m->keys[i], m->counts[i]);
    map_free(m);
    *m = bigger;
    return 0;
}

static int map_add(PairMap *m, uint64_t key, int64_t count) {
    size_t i = slot_of(key, m->mask);
    while (m->keys[i] != UINT64_MAX && m->keys[i] != key) i = (i + 1) & m->mask;
    if (m->keys[i] == UINT64_MAX) {
        m->keys[i] = key;
        m->size++;
    }
    m->counts[i] += count;
    if (2 * m->size > m->mask + 1) return map_grow(m);
    return 0;
}

static int compare_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Pair counting shared by the dense and the run inputs. A row's (code, length) runs are collected in
 * `row_*`; while rows keep the same sequence of codes (boundaries moving a little, as from one row of a
 * segment map to the next) their lengths are summed in `sums`, and the hash map sees the sequence once
 * when it changes. A row equal to the one above (in both maps) is not even scanned: counter_repeat_row. */
typedef struct {
    PairMap map;
    uint64_t *codes, *row_codes;
    int64_t *sums, *row_lengths;
    Py_ssize_t num, row_num, capacity;
    int failed;
} Counter;

static int counter_init(Counter *c, Py_ssize_t width) {
    c->capacity = 2 * width + 1;
    c->codes = malloc((size_t)c->capacity * sizeof(uint64_t));
    c->row_codes = malloc((size_t)c->capacity * sizeof(uint64_t));
    c->sums = malloc((size_t)c->capacity * sizeof(int64_t));
    c->row_lengths = malloc((size_t)c->capacity * sizeof(int64_t));
    c->num = c->row_num = 0;
    c->failed = 0;
    if (map_init(&c->map, 1024) || !c->codes || !c->row_codes || !c->sums || !c->row_lengths) return -1;
    return 0;
}

static void counter_free(Counter *c) {
    map_free(&c->map);
    free(c->codes);
    free(c->row_codes);
    free(c->sums);
    free(c->row_lengths);
}

static void counter_flush(Counter *c) {
    for (Py_ssize_t k = 0; k < c->num && !c->failed; k++) c->failed = map_add(&c->map, c->codes[k], c->sums[k]);
    c->num = 0;
}

static inline void counter_begin_row(Counter *c) { c->row_num = 0; }

static inline void counter_push(Counter *c, uint64_t code, int64_t length) {
    if (c->row_num && c->row_codes[c->row_num - 1] == code) {
        c->row_lengths[c->row_num - 1] += length;
    } else {
        c->row_codes[c->row_num] = code;
        c->row_lengths[c->row_num++] = length;
    }
}

static void counter_end_row(Counter *c) {
    Py_ssize_t n = c->row_num;
    if (n != c->num || memcmp(c->row_codes, c->codes, (size_t)n * sizeof(uint64_t))) {
        counter_flush(c);
        memcpy(c->codes, c->row_codes, (size_t)n * sizeof(uint64_t));
        memset(c->sums, 0, (size_t)n * sizeof(int64_t));
        c->num = n;
    }
    for (Py_ssize_t k = 0; k < n; k++) c->sums[k] += c->row_lengths[k];
}

/* The row equals the last one ended: add its lengths again. */
static inline void counter_repeat_row(Counter *c) {
    for (Py_ssize_t k = 0; k < c->row_num; k++) c->sums[k] += c->row_lengths[k];
}

/* The (codes, counts) tuple of bytes, codes sorted. */
static PyObject *counter_result(Counter *c) {
    counter_flush(c);
    if (c->failed) return PyErr_NoMemory();
    PairMap *map = &c->map;
    PyObject *codes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(map->size * sizeof(uint64_t)));
    PyObject *counts = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(map->size * sizeof(int64_t)));
    PyObject *result = NULL;
    if (codes && counts) {
        uint64_t *keys = (uint64_t *)PyBytes_AS_STRING(codes);
        int64_t *values = (int64_t *)PyBytes_AS_STRING(counts);
        size_t k = 0;
        for (size_t i = 0; i <= map->mask; i++)
            if (map->keys[i] != UINT64_MAX) keys[k++] = map->keys[i];
        qsort(keys, map->size, sizeof(uint64_t), compare_u64);
        for (k = 0; k < map->size; k++) {
            size_t i = slot_of(keys[k], map->mask);
            while (map->keys[i] != keys[k]) i = (i + 1) & map->mask;
            values[k] = map->counts[i];
        }
        result = PyTuple_Pack(2, codes, counts);
    }
    Py_XDECREF(codes);
    Py_XDECREF(counts);
    return result;
}

static PyObject *pair_counts(PyObject *self, PyObject *args) {
    Py_buffer gt, pred;
    Py_ssize_t width;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*n", &gt, &pred, &width)) return NULL;
    PyObject *result = NULL;
    Counter counter = {{NULL, NULL, 0, 0}, NULL, NULL, NULL, NULL, 0, 0, 0, 0};
    Py_ssize_t n = gt.len / (Py_ssize_t)sizeof(uint32_t);
    if (gt.len != pred.len || gt.len % (Py_ssize_t)sizeof(uint32_t) || width <= 0 || n % width) {
        PyErr_Format(PyExc_ValueError,
                     "pair_counts needs two uint32 buffers of one size made of rows of %zd, got %zd and %zd bytes",
                     width, gt.len, pred.len);
        goto done;
    }
    if (counter_init(&counter, width)) {
        PyErr_NoMemory();
        goto done;
    }
    int too_large = 0;
    Py_BEGIN_ALLOW_THREADS
    size_t row_bytes = (size_t)width * sizeof(uint32_t);
    for (Py_ssize_t y = 0; y * width < n && !counter.failed && !too_large; y++) {
        const uint32_t *g = (const uint32_t *)gt.buf + y * width, *p = (const uint32_t *)pred.buf + y * width;
        if (y > 0 && !memcmp(g, g - width, row_bytes) && !memcmp(p, p - width, row_bytes)) {
            counter_repeat_row(&counter);
            continue;
        }
        counter_begin_row(&counter);
        Py_ssize_t start = 0;
        for (Py_ssize_t x = 1; x <= width; x++) {
            if (x < width && g[x] == g[start] && p[x] == p[start]) continue;
            if ((g[start] | p[start]) >> 24) {
                too_large = 1;
                break;
            }
            counter_push(&counter, ((uint64_t)g[start] << 24) | p[start], x - start);
            start = x;
        }
        counter_end_row(&counter);
    }
    Py_END_ALLOW_THREADS
    if (too_large)
        PyErr_SetString(PyExc_ValueError, "pair_counts got a segment id >= 2^24");
    else
        result = counter_result(&counter);
done:
    counter_free(&counter);
    PyBuffer_Release(&gt);
    PyBuffer_Release(&pred);
    return result;
}

/* One image's runs as unfilter_runs writes them. */
typedef struct {
    Py_buffer row_begin, row_end, run_end, run_id;
} Runs;

static int runs_valid(const Runs *r, Py_ssize_t height, Py_ssize_t width) {
    /* Each row's runs must end at strictly increasing columns, the last at the width: then the merge in
     * pair_counts_runs needs no bounds checks. */
    Py_ssize_t capacity = r->run_end.len / (Py_ssize_t)sizeof(int32_t);
    if (r->row_begin.len < height * (Py_ssize_t)sizeof(int32_t) || r->row_end.len != r->row_begin.len ||
        r->run_id.len != capacity * (Py_ssize_t)sizeof(uint32_t))
        return 0;
    const int32_t *begin = r->row_begin.buf, *end = r->row_end.buf, *run_end = r->run_end.buf;
    for (Py_ssize_t y = 0; y < height; y++) {
        if (begin[y] < 0 || end[y] <= begin[y] || end[y] > capacity || run_end[end[y] - 1] != width) return 0;
        if (y > 0 && begin[y] == begin[y - 1] && end[y] == end[y - 1]) continue; /* shared with the row above */
        int32_t x = 0;
        for (Py_ssize_t k = begin[y]; k < end[y]; k++) {
            if (run_end[k] <= x) return 0;
            x = run_end[k];
        }
    }
    return 1;
}

/* Labels 0..L-1 for the distinct ids of runs[0..count), in first-seen order. Returns L, or -1 when out of
 * memory; *ids receives the id of each label (free it). */
static Py_ssize_t label_runs(const uint32_t *run_id, Py_ssize_t count, int32_t *labels, uint32_t **ids) {
    size_t capacity = 1024, mask = capacity - 1, ids_capacity = 256;
    uint32_t *keys = calloc(capacity, sizeof(uint32_t)); /* id + 1; 0 marks an empty slot */
    int32_t *values = malloc(capacity * sizeof(int32_t));
    uint32_t *found = malloc(ids_capacity * sizeof(uint32_t));
    Py_ssize_t num = 0;
    if (!keys || !values || !found) goto fail;
    for (Py_ssize_t k = 0; k < count; k++) {
        uint32_t key = (run_id[k] & 0xFFFFFFu) + 1;
        size_t i = (size_t)(((uint64_t)key * 0x9E3779B97F4A7C15ull) >> 32) & mask;
        while (keys[i] && keys[i] != key) i = (i + 1) & mask;
        if (keys[i]) {
            labels[k] = values[i];
            continue;
        }
        if ((size_t)num == ids_capacity) {
            uint32_t *bigger = realloc(found, 2 * ids_capacity * sizeof(uint32_t));
            if (!bigger) goto fail;
            found = bigger;
            ids_capacity *= 2;
        }
        keys[i] = key;
        values[i] = (int32_t)num;
        found[num] = key - 1;
        labels[k] = (int32_t)num++;
        if (2 * (size_t)num > capacity) { /* rehash into a table twice as large */
            size_t new_capacity = 2 * capacity, new_mask = new_capacity - 1;
            uint32_t *new_keys = calloc(new_capacity, sizeof(uint32_t));
            int32_t *new_values = malloc(new_capacity * sizeof(int32_t));
            if (!new_keys || !new_values) {
                free(new_keys);
                free(new_values);
                goto fail;
            }
            for (size_t j = 0; j < capacity; j++) {
                if (!keys[j]) continue;
                size_t t = (size_t)(((uint64_t)keys[j] * 0x9E3779B97F4A7C15ull) >> 32) & new_mask;
                while (new_keys[t]) t = (t + 1) & new_mask;
                new_keys[t] = keys[j];
                new_values[t] = values[j];
            }
            free(keys);
            free(values);
            keys = new_keys;
            values = new_values;
            capacity = new_capacity;
            mask = new_mask;
        }
    }
    free(keys);
    free(values);
    *ids = found;
    return num;
fail:
    free(keys);
    free(values);
    free(found);
    return -1;
}

typedef struct {
    uint64_t code;
    int64_t count;
} CodeCount;

static int compare_code_count(const void *a, const void *b) {
    uint64_t x = ((const CodeCount *)a)->code, y = ((const CodeCount *)b)->code;
    return (x > y) - (x < y);
}

static Py_ssize_t max_run_end(const Runs *r, Py_ssize_t height) {
    const int32_t *end = r->row_end.buf;
    Py_ssize_t most = 0;
    for (Py_ssize_t y = 0; y < height; y++) most = end[y] > most ? end[y] : most;
    return most;
}

/* Pair counts through dense labels: every run gets the label of its id, and each piece of a row adds
 * its length to cells[gt label][pred label]; no hashing per piece. Returns the (codes, counts) tuple,
 * NULL with an exception, or NULL without one when the label grid would be too large (the caller then
 * counts through the hash map). */
static PyObject *dense_pair_counts(const Runs *gt, const Runs *pred, Py_ssize_t height, Py_ssize_t width) {
    Py_ssize_t num_gt = max_run_end(gt, height), num_pred = max_run_end(pred, height);
    int32_t *gt_labels = malloc((size_t)(num_gt ? num_gt : 1) * sizeof(int32_t));
    int32_t *pred_labels = malloc((size_t)(num_pred ? num_pred : 1) * sizeof(int32_t));
    uint32_t *gt_ids = NULL, *pred_ids = NULL;
    int64_t *cells = NULL;
    CodeCount *found = NULL;
    PyObject *result = NULL;
    int no_memory = 0, too_large = 0;
    if (!gt_labels || !pred_labels) {
        no_memory = 1;
        goto done;
    }
    Py_ssize_t L_gt, L_pred, num_found = 0;
    Py_BEGIN_ALLOW_THREADS
    L_gt = label_runs(gt->run_id.buf, num_gt, gt_labels, &gt_ids);
    L_pred = L_gt < 0 ? -1 : label_runs(pred->run_id.buf, num_pred, pred_labels, &pred_ids);
    if (L_gt < 0 || L_pred < 0) {
        no_memory = 1;
    } else if ((size_t)L_gt * (size_t)L_pred > ((size_t)1 << 20)) {
        too_large = 1;
    } else {
        cells = calloc((size_t)L_gt * (size_t)L_pred, sizeof(int64_t));
        no_memory = !cells;
    }
    if (cells) {
        const int32_t *gb = gt->row_begin.buf, *g_end = gt->run_end.buf;
        const int32_t *pb = pred->row_begin.buf, *p_end = pred->run_end.buf;
        for (Py_ssize_t y = 0; y < height; y++) {
            Py_ssize_t i = gb[y], j = pb[y];
            int32_t x = 0;
            while (x < width) {
                int32_t stop = g_end[i] < p_end[j] ? g_end[i] : p_end[j];
                cells[(size_t)gt_labels[i] * (size_t)L_pred + (size_t)pred_labels[j]] += stop - x;
                x = stop;
                i += g_end[i] == stop;
                j += p_end[j] == stop;
            }
        }
        size_t total = (size_t)L_gt * (size_t)L_pred;
        for (size_t c = 0; c < total; c++) num_found += cells[c] != 0;
        found = malloc((size_t)(num_found ? num_found : 1) * sizeof(CodeCount));
        if (found) {
            Py_ssize_t k = 0;
            for (size_t c = 0; c < total; c++) {
                if (!cells[c]) continue;
                found[k].code = ((uint64_t)gt_ids[c / (size_t)L_pred] << 24) | pred_ids[c % (size_t)L_pred];
                found[k++].count = cells[c];
            }
            qsort(found, (size_t)num_found, sizeof(CodeCount), compare_code_count);
        } else {
            no_memory = 1;
        }
    }
    Py_END_ALLOW_THREADS
    if (no_memory) goto done;
    if (too_large) goto done;
    PyObject *codes = PyBytes_FromStringAndSize(NULL, num_found * (Py_ssize_t)sizeof(uint64_t));
    PyObject *counts = PyBytes_FromStringAndSize(NULL, num_found * (Py_ssize_t)sizeof(int64_t));
    if (codes && counts) {
        uint64_t *c = (uint64_t *)PyBytes_AS_STRING(codes);
        int64_t *n = (int64_t *)PyBytes_AS_STRING(counts);
        for (Py_ssize_t k = 0; k < num_found; k++) {
            c[k] = found[k].code;
            n[k] = found[k].count;
        }
        result = PyTuple_Pack(2, codes, counts);
    }
    Py_XDECREF(codes);
    Py_XDECREF(counts);
done:
    if (no_memory) PyErr_NoMemory();
    free(gt_labels);
    free(pred_labels);
    free(gt_ids);
    free(pred_ids);
    free(cells);
    free(found);
    return result;
}

static PyObject *pair_counts_runs(PyObject *self, PyObject *args) {
    Runs gt, pred;
    Py_ssize_t height, width;
    (void)self;
    if (!PyArg_ParseTuple(args, "(y*y*y*y*)(y*y*y*y*)nn", &gt.row_begin, &gt.row_end, &gt.run_end, &gt.run_id,
                          &pred.row_begin, &pred.row_end, &pred.run_end, &pred.run_id, &height, &width))
        return NULL;
    PyObject *result = NULL;
    Counter counter = {{NULL, NULL, 0, 0}, NULL, NULL, NULL, NULL, 0, 0, 0, 0};
    if (height < 0 || width <= 0 || !runs_valid(&gt, height, width) || !runs_valid(&pred, height, width)) {
        PyErr_SetString(PyExc_ValueError, "pair_counts_runs: runs that do not cover each row from 0 to its width");
        goto done;
    }
    result = dense_pair_counts(&gt, &pred, height, width);
    if (result || PyErr_Occurred()) goto done;
    if (counter_init(&counter, width)) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    const int32_t *gb = gt.row_begin.buf, *ge = gt.row_end.buf, *g_end = gt.run_end.buf;
    const int32_t *pb = pred.row_begin.buf, *pe = pred.row_end.buf, *p_end = pred.run_end.buf;
    const uint32_t *g_id = gt.run_id.buf, *p_id = pred.run_id.buf;
    for (Py_ssize_t y = 0; y < height && !counter.failed; y++) {
        if (y > 0 && gb[y] == gb[y - 1] && ge[y] == ge[y - 1] && pb[y] == pb[y - 1] && pe[y] == pe[y - 1]) {
            counter_repeat_row(&counter);
            continue;
        }
        counter_begin_row(&counter);
        /* Merge the two rows' runs: each piece between consecutive run ends has one (gt, pred) pair. */
        Py_ssize_t i = gb[y], j = pb[y];
        int32_t x = 0;
        while (x < width) {
            int32_t stop = g_end[i] < p_end[j] ? g_end[i] : p_end[j];
            counter_push(&counter, ((uint64_t)(g_id[i] & 0xFFFFFFu) << 24) | (p_id[j] & 0xFFFFFFu), stop - x);
            x = stop;
            if (g_end[i] == stop) i++;
            if (p_end[j] == stop) j++;
        }
        counter_end_row(&counter);
    }
    Py_END_ALLOW_THREADS
    result = counter_result(&counter);
done:
    counter_free(&counter);
    PyBuffer_Release(&gt.row_begin);
    PyBuffer_Release(&gt.row_end);
    PyBuffer_Release(&gt.run_end);
    PyBuffer_Release(&gt.run_id);
    PyBuffer_Release(&pred.row_begin);
    PyBuffer_Release(&pred.row_end);
    PyBuffer_Release(&pred.run_end);
    PyBuffer_Release(&pred.run_id);
    return result;
}

static PyMethodDef methods[] = {
    {"unfilter_ids", unfilter_ids, METH_VARARGS,
     "unfilter_ids(data, width, channels, prev, out, first_row) -> rows: undo the PNG row filters of whole\n"
     "rows of an inflated 8-bit RGB(A) stream and write each pixel's id R + 256 G + 256^2 B into rows\n"
     "first_row... of `out` (uint32); `prev` carries the last reconstructed row between calls."},
    {"unfilter_runs", unfilter_runs, METH_VARARGS,
     "unfilter_runs(data, width, channels, prev, first_row, row_begin, row_end, run_end, run_id, num_runs)\n"
     "-> num_runs: as unfilter_ids, but each row is written as runs of equal ids: row y is runs\n"
     "row_begin[y]..row_end[y]-1 (int32), run k ends before x = run_end[k] (int32) with id run_id[k]\n"
     "(uint32); a row equal to the row above shares its runs. Appends after `num_runs` runs."},
    {"load_zlib_ng", load_zlib_ng, METH_VARARGS,
     "load_zlib_ng(path) -> bool: resolve zlib-ng's inflate functions from the zlib_ng module file at\n"
     "`path`; True when inflate_ids/inflate_runs can be used."},
    {"inflate_ids", inflate_ids, METH_VARARGS,
     "inflate_ids(stream, height, width, channels, out): inflate a PNG's zlib stream (all IDAT data) and\n"
     "write its ids into `out` (height * width uint32), as unfilter_ids does for inflated rows."},
    {"inflate_runs", inflate_runs, METH_VARARGS,
     "inflate_runs(stream, height, width, channels, row_begin, row_end, run_end, run_id[, whole]) -> num_runs:\n"
     "inflate a PNG's zlib stream and write its rows as runs, as unfilter_runs does. `whole`, a writable\n"
     "buffer of height * (width * channels + 1) bytes reused across images, makes inflating faster."},
    {"pair_counts", pair_counts, METH_VARARGS,
     "pair_counts(gt, pred, width) -> (codes, counts): sorted distinct gt * 2^24 + pred codes of two\n"
     "uint32 id buffers with rows of `width` (uint64 bytes) and their pixel counts (int64 bytes)."},
    {"pair_counts_runs", pair_counts_runs, METH_VARARGS,
     "pair_counts_runs(gt_runs, pred_runs, height, width) -> (codes, counts): pair_counts over two images\n"
     "given as (row_begin, row_end, run_end, run_id) tuples written by unfilter_runs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pngids",
                                    "Native loops of panoptic evaluation: PNG unfiltering, pair counting.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__pngids(void) { return PyModule_Create(&module); }
