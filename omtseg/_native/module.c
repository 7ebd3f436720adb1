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
 *              add into a (gt label, pred label) grid; for images with so many segments that the grid
 *              would pass 2^20 cells it returns None and Python counts from the expanded maps.
 *
 * Run layout (PanopticRuns in omtseg.io): row y is runs row_begin[y] .. row_end[y] - 1 (int32); run k
 * ends before column run_end[k] (int32) and has id run_id[k] (uint32). Every function releases the GIL
 * while it works and raises ValueError for inconsistent input. Written for omtseg from the PNG, zlib
 * (RFC 1950) and zlib-ng API documentation; no code taken from elsewhere.
 */
#include "pngids.h"

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
    {"pair_counts_runs", pair_counts_runs, METH_VARARGS,
     "pair_counts_runs(gt_runs, pred_runs, height, width) -> (codes, counts) or None: the sorted distinct\n"
     "codes gt_id * 2^24 + pred_id (uint64 bytes) and their pixel counts (int64 bytes) of two images given\n"
     "as (row_begin, row_end, run_end, run_id) tuples; None when over 2^20 (gt, pred) label pairs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pngids",
                                    "Native loops of panoptic evaluation: PNG unfiltering, pair counting.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__pngids(void) { return PyModule_Create(&module); }
