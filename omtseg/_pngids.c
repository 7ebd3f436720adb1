/*
 * omtseg._pngids: the two hot loops of panoptic evaluation in C.
 *
 * unfilter_ids(data, width, channels, prev, out, first_row) -> rows
 *     `data` is a run of whole rows of a PNG image's inflated IDAT stream (8-bit samples, not
 *     interlaced, RGB or RGBA): each row is one filter-type byte and width * channels bytes. The PNG
 *     filters (None, Sub, Up, Average, Paeth; PNG spec section 9) are undone row by row, and each
 *     pixel's segment id R + 256 G + 256^2 B (alpha ignored) is written to rows first_row, ... of
 *     `out`, a writable buffer of at least (first_row + rows) * width native uint32. `prev` (a
 *     writable width * channels bytes, zeros before the first row) carries the last reconstructed
 *     row from one call to the next, so the stream can be inflated and undone in small pieces.
 *
 * pair_counts(gt, pred, width) -> (codes, counts)
 *     `gt` and `pred` are equally long buffers of native uint32 segment ids (< 2^24), rows of `width`
 *     pixels. Returns two
 *     bytes objects: the sorted distinct codes gt * 2^24 + pred as native uint64 and their pixel
 *     counts as native int64, i.e. the intersection of every (ground truth, prediction) segment pair.
 *     Segment maps are piecewise constant, so consecutive equal pairs are counted as one run before
 *     they touch the hash table, and a row (of both maps) equal to the row above is not scanned.
 *
 * Both release the GIL while they run. Written for omtseg from the PNG specification; no code taken
 * from elsewhere.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline uint8_t paeth(int a, int b, int c) {
    int p = a + b - c;
    int pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    if (pa <= pb && pa <= pc) return (uint8_t)a;
    if (pb <= pc) return (uint8_t)b;
    return (uint8_t)c;
}

static inline int all_zero(const uint8_t *p, Py_ssize_t n) {
    uint8_t acc = 0;
    for (Py_ssize_t i = 0; i < n; i++) acc |= p[i];
    return acc == 0;
}

/* p[0..bpp) == q[0..bpp) for the 3 or 4 bytes of a pixel. */
static inline int same_bytes(const uint8_t *p, const uint8_t *q, int bpp) {
    return p[0] == q[0] && p[1] == q[1] && p[2] == q[2] && (bpp == 3 || p[3] == q[3]);
}

/* Number of leading zero bytes of p[0..n). */
static inline Py_ssize_t zero_run(const uint8_t *p, Py_ssize_t n) {
    Py_ssize_t i = 0;
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
static int unfilter_row(uint8_t *row, const uint8_t *prev, Py_ssize_t n, int bpp, int type) {
    Py_ssize_t i;
    switch (type) {
    case 0:
        return 0;
    case 1:
        for (i = bpp; i < n; i++) row[i] = (uint8_t)(row[i] + row[i - bpp]);
        return 0;
    case 2:
        for (i = 0; i < n; i++) row[i] = (uint8_t)(row[i] + prev[i]);
        return 0;
    case 3:
        for (i = 0; i < bpp && i < n; i++) row[i] = (uint8_t)(row[i] + (prev[i] >> 1));
        for (; i < n; i++) row[i] = (uint8_t)(row[i] + ((row[i - bpp] + prev[i]) >> 1));
        return 0;
    case 4:
        for (i = 0; i < bpp && i < n; i++) row[i] = (uint8_t)(row[i] + prev[i]);
        while (i < n) {
            if (same_bytes(row + i - bpp, prev + i - bpp, bpp)) {
                /* The pixel to the left equals the one above it (a == c), so the predictor is the byte
                 * above; with zero differences the row goes on equal to the row above, which is copied
                 * for the whole zero stretch. */
                Py_ssize_t end = i + zero_run(row + i, n - i) / bpp * bpp;
                memcpy(row + i, prev + i, (size_t)(end - i));
                i = end;
            } else if (same_bytes(prev + i, prev + i - bpp, bpp)) {
                /* The pixel above equals the one above-left (b == c), so the predictor is the pixel to
                 * the left: while the row above stays constant and the differences are zero, the left
                 * pixel repeats (a horizontal edge between two segments). */
                Py_ssize_t end = i;
                while (end + bpp <= n && !row[end] && !row[end + 1] && !row[end + 2] &&
                       (bpp == 3 || !row[end + 3]) && same_bytes(prev + end, prev + end - bpp, bpp)) {
                    memcpy(row + end, row + end - bpp, (size_t)bpp);
                    end += bpp;
                }
                i = end;
            }
            if (i >= n) break;
            for (Py_ssize_t stop = i + bpp; i < stop; i++) {
                uint8_t a = row[i - bpp], b = prev[i], c = prev[i - bpp];
                row[i] = (uint8_t)(row[i] + (a == c ? b : b == c ? a : paeth(a, b, c)));
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
static int decode_rows(const uint8_t *src, Py_ssize_t rows, Py_ssize_t first_row, Py_ssize_t width,
                       int channels, uint8_t *prev, uint8_t *cur, RowSink *sink, Py_ssize_t *bad_row,
                       int *bad_type) {
    Py_ssize_t stride = width * channels;
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
        memcpy(cur, src + 1, (size_t)stride);
        if (unfilter_row(cur, prev, stride, channels, type)) {
            *bad_row = y;
            *bad_type = type;
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
            uint32_t current = pixel_id(cur);
            const uint8_t *px = cur + channels;
            for (Py_ssize_t x = 1; x < width; x++, px += channels) {
                uint32_t id = pixel_id(px);
                if (id != current) {
                    sink->run_end[n] = (int32_t)x;
                    sink->run_id[n++] = current;
                    current = id;
                }
            }
            sink->run_end[n] = (int32_t)width;
            sink->run_id[n++] = current;
            sink->row_end[y] = (int32_t)n;
            sink->num_runs = n;
        }
        memcpy(prev, cur, (size_t)stride);
    }
    return DECODE_OK;
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
    cur = calloc((size_t)(width * channels) + 1, 1);
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
    cur = calloc((size_t)(width * channels) + 1, 1);
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

/* Pair counting shared by the dense and the run inputs: a row's (code, length) runs are kept until the
 * next row differs, so rows equal to the one above (in both maps) only bump `repeat`. */
typedef struct {
    PairMap map;
    uint64_t *codes;
    int64_t *lengths;
    Py_ssize_t num, capacity;
    int64_t repeat;
    int failed;
} Counter;

static int counter_init(Counter *c, Py_ssize_t width) {
    c->capacity = 2 * width + 1;
    c->codes = malloc((size_t)c->capacity * sizeof(uint64_t));
    c->lengths = malloc((size_t)c->capacity * sizeof(int64_t));
    c->num = 0;
    c->repeat = 0;
    c->failed = 0;
    if (map_init(&c->map, 1024) || !c->codes || !c->lengths) return -1;
    return 0;
}

static void counter_free(Counter *c) {
    map_free(&c->map);
    free(c->codes);
    free(c->lengths);
}

/* Flush the pending row (times its repeats) and start a new one. */
static void counter_new_row(Counter *c) {
    for (Py_ssize_t k = 0; k < c->num && !c->failed; k++)
        c->failed = map_add(&c->map, c->codes[k], c->lengths[k] * c->repeat);
    c->num = 0;
    c->repeat = 1;
}

static inline void counter_push(Counter *c, uint64_t code, int64_t length) {
    if (c->num && c->codes[c->num - 1] == code) {
        c->lengths[c->num - 1] += length;
    } else {
        c->codes[c->num] = code;
        c->lengths[c->num++] = length;
    }
}

/* The (codes, counts) tuple of bytes, codes sorted. */
static PyObject *counter_result(Counter *c) {
    counter_new_row(c);
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
    Counter counter = {{NULL, NULL, 0, 0}, NULL, NULL, 0, 0, 0, 0};
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
            counter.repeat++;
            continue;
        }
        counter_new_row(&counter);
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

static int runs_valid(const Runs *r, Py_ssize_t height) {
    Py_ssize_t capacity = r->run_end.len / (Py_ssize_t)sizeof(int32_t);
    if (r->row_begin.len < height * (Py_ssize_t)sizeof(int32_t) || r->row_end.len != r->row_begin.len ||
        r->run_id.len != capacity * (Py_ssize_t)sizeof(uint32_t))
        return 0;
    const int32_t *begin = r->row_begin.buf, *end = r->row_end.buf;
    for (Py_ssize_t y = 0; y < height; y++)
        if (begin[y] < 0 || end[y] <= begin[y] || end[y] > capacity) return 0;
    return 1;
}

static PyObject *pair_counts_runs(PyObject *self, PyObject *args) {
    Runs gt, pred;
    Py_ssize_t height, width;
    (void)self;
    if (!PyArg_ParseTuple(args, "(y*y*y*y*)(y*y*y*y*)nn", &gt.row_begin, &gt.row_end, &gt.run_end, &gt.run_id,
                          &pred.row_begin, &pred.row_end, &pred.run_end, &pred.run_id, &height, &width))
        return NULL;
    PyObject *result = NULL;
    Counter counter = {{NULL, NULL, 0, 0}, NULL, NULL, 0, 0, 0, 0};
    if (height < 0 || width <= 0 || !runs_valid(&gt, height) || !runs_valid(&pred, height)) {
        PyErr_SetString(PyExc_ValueError, "pair_counts_runs: run buffers that do not describe the image's rows");
        goto done;
    }
    if (counter_init(&counter, width)) {
        PyErr_NoMemory();
        goto done;
    }
    int broken = 0;
    Py_BEGIN_ALLOW_THREADS
    const int32_t *gb = gt.row_begin.buf, *ge = gt.row_end.buf, *g_end = gt.run_end.buf;
    const int32_t *pb = pred.row_begin.buf, *pe = pred.row_end.buf, *p_end = pred.run_end.buf;
    const uint32_t *g_id = gt.run_id.buf, *p_id = pred.run_id.buf;
    for (Py_ssize_t y = 0; y < height && !counter.failed && !broken; y++) {
        if (y > 0 && gb[y] == gb[y - 1] && ge[y] == ge[y - 1] && pb[y] == pb[y - 1] && pe[y] == pe[y - 1]) {
            counter.repeat++;
            continue;
        }
        counter_new_row(&counter);
        /* Merge the two rows' runs: each piece between consecutive run ends has one (gt, pred) pair. */
        Py_ssize_t i = gb[y], j = pb[y];
        int32_t x = 0;
        while (x < width) {
            if (i >= ge[y] || j >= pe[y] || g_end[i] <= x || p_end[j] <= x) {
                broken = 1;
                break;
            }
            int32_t stop = g_end[i] < p_end[j] ? g_end[i] : p_end[j];
            counter_push(&counter, ((uint64_t)(g_id[i] & 0xFFFFFFu) << 24) | (p_id[j] & 0xFFFFFFu), stop - x);
            x = stop;
            if (g_end[i] == stop) i++;
            if (p_end[j] == stop) j++;
        }
    }
    Py_END_ALLOW_THREADS
    if (broken)
        PyErr_SetString(PyExc_ValueError, "pair_counts_runs: a row's runs do not cover it from 0 to its width");
    else
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
