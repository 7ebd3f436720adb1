/* Declarations shared by the sources of the omtseg._pngids extension (see module.c for the design). */
#ifndef OMTSEG_PNGIDS_H
#define OMTSEG_PNGIDS_H

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

/* Undo the filters of `rows` inflated rows (each a filter byte and width * channels bytes) starting at
 * image row `first_row` into `sink`; `carried` holds the previous row (zeros before row 0) and receives
 * the last one; `scratch` has 2 * (width * channels + 1) bytes. Returns DECODE_OK or an error status. */
int decode_rows(const uint8_t *src, Py_ssize_t rows, Py_ssize_t first_row, Py_ssize_t width, int channels,
                uint8_t *carried, uint8_t *scratch, RowSink *sink, Py_ssize_t *bad_row, int *bad_type);
/* Sets the ValueError of a failed decode_rows and returns NULL. */
PyObject *finish_decode(int status, Py_ssize_t bad_row, int bad_type);

/* The module's functions (documented in module.c's method table). */
PyObject *unfilter_ids(PyObject *self, PyObject *args);
PyObject *unfilter_runs(PyObject *self, PyObject *args);
PyObject *load_zlib_ng(PyObject *self, PyObject *args);
PyObject *inflate_ids(PyObject *self, PyObject *args);
PyObject *inflate_runs(PyObject *self, PyObject *args);
PyObject *pair_counts_runs(PyObject *self, PyObject *args);

#endif
