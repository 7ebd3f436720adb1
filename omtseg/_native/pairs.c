/* Pixel counts of (ground truth id, predicted id) pairs, from two images given as runs. */
#include "pngids.h"

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
 * NULL with an exception, or NULL without one when the label grid would be too large. */
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

PyObject *pair_counts_runs(PyObject *self, PyObject *args) {
    Runs gt, pred;
    Py_ssize_t height, width;
    (void)self;
    if (!PyArg_ParseTuple(args, "(y*y*y*y*)(y*y*y*y*)nn", &gt.row_begin, &gt.row_end, &gt.run_end, &gt.run_id,
                          &pred.row_begin, &pred.row_end, &pred.run_end, &pred.run_id, &height, &width))
        return NULL;
    PyObject *result = NULL;
    if (height < 0 || width <= 0 || !runs_valid(&gt, height, width) || !runs_valid(&pred, height, width)) {
        PyErr_SetString(PyExc_ValueError, "pair_counts_runs: runs that do not cover each row from 0 to its width");
    } else {
        result = dense_pair_counts(&gt, &pred, height, width);
        if (!result && !PyErr_Occurred()) result = Py_NewRef(Py_None); /* too many segments for the grid */
    }
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
