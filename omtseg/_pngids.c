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
            if (!memcmp(row + i - bpp, prev + i - bpp, (size_t)bpp)) {
                /* The pixel to the left equals the one above it (a == c), so the predictor is the byte
                 * above; with zero differences the row goes on equal to the row above, which is copied
                 * for the whole zero stretch. Segment maps' Paeth rows are mostly such stretches. */
                Py_ssize_t end = i + zero_run(row + i, n - i) / bpp * bpp;
                memcpy(row + i, prev + i, (size_t)(end - i));
                i = end;
                if (i >= n) break;
            }
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

/* Pixel ids R + 256 G + 256^2 B of a reconstructed row. `px` must have one readable byte past the
 * row's end (the last 3-channel pixel is read as 4 bytes). */
static inline void to_ids(const uint8_t *px, uint32_t *ids, Py_ssize_t width, int channels) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (Py_ssize_t x = 0; x < width; x++, px += channels) {
        uint32_t v;
        memcpy(&v, px, 4);
        ids[x] = v & 0xFFFFFFu;
    }
#else
    for (Py_ssize_t x = 0; x < width; x++, px += channels)
        ids[x] = (uint32_t)px[0] | ((uint32_t)px[1] << 8) | ((uint32_t)px[2] << 16);
#endif
}

static PyObject *unfilter_ids(PyObject *self, PyObject *args) {
    Py_buffer data, prev_buf, out;
    Py_ssize_t width, first_row;
    int channels;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*niw*w*n", &data, &width, &channels, &prev_buf, &out, &first_row)) return NULL;
    PyObject *result = NULL;
    uint8_t *cur = NULL;
    Py_ssize_t stride = width * channels, rows = 0;
    if (channels != 3 && channels != 4) {
        PyErr_Format(PyExc_ValueError, "unfilter_ids handles 3 or 4 channels, got %d", channels);
        goto done;
    }
    if (width <= 0 || data.len % (stride + 1)) {
        PyErr_Format(PyExc_ValueError, "%zd bytes of image data are not whole rows of %zd pixels x %d channels",
                     data.len, width, channels);
        goto done;
    }
    rows = data.len / (stride + 1);
    if (prev_buf.len != stride || first_row < 0 ||
        out.len < (first_row + rows) * width * (Py_ssize_t)sizeof(uint32_t)) {
        PyErr_SetString(PyExc_ValueError, "unfilter_ids: previous-row or output buffer of the wrong size");
        goto done;
    }
    cur = calloc((size_t)stride + 1, 1); /* + 1: see to_ids */
    if (!cur) {
        PyErr_NoMemory();
        goto done;
    }
    int bad_type = -1;
    Py_ssize_t bad_row = -1;
    Py_BEGIN_ALLOW_THREADS
    const uint8_t *src = data.buf;
    uint8_t *prev = prev_buf.buf;
    uint32_t *ids = (uint32_t *)out.buf + first_row * width;
    for (Py_ssize_t y = first_row; y < first_row + rows; y++, src += stride + 1, ids += width) {
        int type = src[0];
        if (y > 0 && (type == 2 || type == 4) && all_zero(src + 1, stride)) {
            /* An all-zero Up or Paeth row repeats the row above (for Paeth: with left == upper-left
             * the predictor is the byte above, by induction along the row). Segment maps are full of
             * them; `prev` already holds this row. */
            memcpy(ids, ids - width, (size_t)width * sizeof(uint32_t));
            continue;
        }
        memcpy(cur, src + 1, (size_t)stride);
        if (unfilter_row(cur, prev, stride, channels, type)) {
            bad_type = type;
            bad_row = y;
            break;
        }
        to_ids(cur, ids, width, channels);
        memcpy(prev, cur, (size_t)stride);
    }
    Py_END_ALLOW_THREADS
    if (bad_row >= 0) {
        PyErr_Format(PyExc_ValueError, "row %zd has unknown PNG filter type %d", bad_row, bad_type);
        goto done;
    }
    result = PyLong_FromSsize_t(rows);
done:
    free(cur);
    PyBuffer_Release(&data);
    PyBuffer_Release(&prev_buf);
    PyBuffer_Release(&out);
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

static PyObject *pair_counts(PyObject *self, PyObject *args) {
    Py_buffer gt, pred;
    Py_ssize_t width;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*n", &gt, &pred, &width)) return NULL;
    PyObject *result = NULL, *codes = NULL, *counts = NULL;
    PairMap map = {NULL, NULL, 0, 0};
    uint64_t *run_codes = NULL;
    int64_t *run_lengths = NULL;
    Py_ssize_t n = gt.len / (Py_ssize_t)sizeof(uint32_t);
    if (gt.len != pred.len || gt.len % (Py_ssize_t)sizeof(uint32_t) || width <= 0 || n % width) {
        PyErr_Format(PyExc_ValueError,
                     "pair_counts needs two uint32 buffers of one size made of rows of %zd, got %zd and %zd bytes",
                     width, gt.len, pred.len);
        goto done;
    }
    run_codes = malloc((size_t)width * sizeof(uint64_t));
    run_lengths = malloc((size_t)width * sizeof(int64_t));
    if (!run_codes || !run_lengths || map_init(&map, 1024)) {
        PyErr_NoMemory();
        goto done;
    }
    int failed = 0, too_large = 0;
    Py_BEGIN_ALLOW_THREADS
    /* Runs of equal (gt, pred) along a row are counted once; a row pair equal to the one above adds its
     * runs again through `repeat` instead of being scanned. */
    Py_ssize_t num_runs = 0;
    int64_t repeat = 0;
    size_t row_bytes = (size_t)width * sizeof(uint32_t);
    for (Py_ssize_t y = 0; y * width < n && !failed && !too_large; y++) {
        const uint32_t *g = (const uint32_t *)gt.buf + y * width, *p = (const uint32_t *)pred.buf + y * width;
        if (y > 0 && !memcmp(g, g - width, row_bytes) && !memcmp(p, p - width, row_bytes)) {
            repeat++;
            continue;
        }
        for (Py_ssize_t k = 0; k < num_runs && !failed; k++)
            failed = map_add(&map, run_codes[k], run_lengths[k] * repeat);
        num_runs = 0;
        repeat = 1;
        Py_ssize_t start = 0;
        for (Py_ssize_t x = 1; x <= width; x++) {
            if (x < width && g[x] == g[start] && p[x] == p[start]) continue;
            if ((g[start] | p[start]) >> 24) {
                too_large = 1;
                break;
            }
            run_codes[num_runs] = ((uint64_t)g[start] << 24) | p[start];
            run_lengths[num_runs++] = x - start;
            start = x;
        }
    }
    for (Py_ssize_t k = 0; k < num_runs && !failed && !too_large; k++)
        failed = map_add(&map, run_codes[k], run_lengths[k] * repeat);
    Py_END_ALLOW_THREADS
    if (too_large) {
        PyErr_SetString(PyExc_ValueError, "pair_counts got a segment id >= 2^24");
        goto done;
    }
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    codes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(map.size * sizeof(uint64_t)));
    counts = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(map.size * sizeof(int64_t)));
    if (!codes || !counts) goto done;
    uint64_t *keys = (uint64_t *)PyBytes_AS_STRING(codes);
    int64_t *values = (int64_t *)PyBytes_AS_STRING(counts);
    size_t k = 0;
    for (size_t i = 0; i <= map.mask; i++)
        if (map.keys[i] != UINT64_MAX) keys[k++] = map.keys[i];
    qsort(keys, map.size, sizeof(uint64_t), compare_u64);
    for (k = 0; k < map.size; k++) {
        size_t i = slot_of(keys[k], map.mask);
        while (map.keys[i] != keys[k]) i = (i + 1) & map.mask;
        values[k] = map.counts[i];
    }
    result = PyTuple_Pack(2, codes, counts);
done:
    Py_XDECREF(codes);
    Py_XDECREF(counts);
    free(run_codes);
    free(run_lengths);
    map_free(&map);
    PyBuffer_Release(&gt);
    PyBuffer_Release(&pred);
    return result;
}

static PyMethodDef methods[] = {
    {"unfilter_ids", unfilter_ids, METH_VARARGS,
     "unfilter_ids(data, width, channels, prev, out, first_row) -> rows: undo the PNG row filters of whole\n"
     "rows of an inflated 8-bit RGB(A) stream and write each pixel's id R + 256 G + 256^2 B into rows\n"
     "first_row... of `out` (uint32); `prev` carries the last reconstructed row between calls."},
    {"pair_counts", pair_counts, METH_VARARGS,
     "pair_counts(gt, pred, width) -> (codes, counts): sorted distinct gt * 2^24 + pred codes of two\n"
     "uint32 id buffers with rows of `width` (uint64 bytes) and their pixel counts (int64 bytes)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pngids",
                                    "Native loops of panoptic evaluation: PNG unfiltering, pair counting.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__pngids(void) { return PyModule_Create(&module); }
