/* Inflating natively with zlib-ng.
 * The zlib-ng Python package (a dependency) links zlib-ng into its extension module and exports its native
 * API (zng_inflateInit2, zng_inflate, zng_inflateEnd). load_zlib_ng(path) resolves those functions from the
 * already-loaded module, so a whole image is inflated, unfiltered and turned into runs in one C call, with
 * no Python object per piece of inflated data. Without it (another platform, another zlib-ng build) Python inflates piece by piece instead. */
#include "pngids.h"

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

PyObject *load_zlib_ng(PyObject *self, PyObject *args) {
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

PyObject *inflate_ids(PyObject *self, PyObject *args) {
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

PyObject *inflate_runs(PyObject *self, PyObject *args) {
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

