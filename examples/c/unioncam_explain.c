/*
 * unioncam_explain: run the end-to-end UnionCAM graph (unioncam.onnx) from C11 with the ONNX Runtime C API.
 *
 *   unioncam_explain [--runs N] model.onnx image.ppm out.pgm [class]
 *
 * Reads a binary PPM (P6, 8 or 16 bits), resizes it to the model's input with bilinear
 * interpolation and half-pixel centres (OpenCV INTER_LINEAR / PyTorch align_corners=False on float
 * pixels, as unioncam's Python side does), runs the graph, writes the CAM (H x W) as a 16-bit PGM
 * and prints the class, score, betas, the selected map, the masked passes and the time of the run
 * (--runs N: run N times and print the first run and the median of the others, for benchmarks:
 * the first run is the warm-up, as in unioncam bench). Exit status: 0 ok,
 * 1 error, 2 usage.
 *
 * Session options: the defaults (CPU arena and memory patterns on) and ORT_ENABLE_ALL. The graph's
 * masked passes run in a Loop of fixed-size chunks, so the arena stays at one chunk's activations:
 * measured on efficientnet_lite0, turning the arena off saves little and costs time (README, "One
 * ONNX file").
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime under -std=c11 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <onnxruntime_c_api.h>

#define MAX_SIDE 16384

static const OrtApi *ort;

typedef struct {
    int width, height;
    float *rgb; /* height * width * 3, in [0, 1] */
} Image;

static int fail(const char *fmt, const char *arg) {
    fprintf(stderr, "unioncam_explain: error: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    return 1;
}

/* Returns 0 and sets *ok = 0 after printing ONNX Runtime's message when status is an error. */
static int check(OrtStatus *status, const char *what) {
    if (status == NULL) return 1;
    fprintf(stderr, "unioncam_explain: error: %s: %s\n", what, ort->GetErrorMessage(status));
    ort->ReleaseStatus(status);
    return 0;
}

static void free_name(OrtAllocator *alloc, char *name) {
    OrtStatus *status = ort->AllocatorFree(alloc, name);
    if (status) ort->ReleaseStatus(status);
}

/* Next header token of a PNM file, skipping whitespace and comments. */
static int pnm_token(FILE *f, char *buf, size_t size) {
    int c;
    size_t n = 0;
    for (;;) {
        c = fgetc(f);
        if (c == '#') {
            while (c != '\n' && c != EOF) c = fgetc(f);
        } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            continue;
        } else {
            break;
        }
    }
    while (c != EOF && c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '#') {
        if (n + 1 >= size) return 0;
        buf[n++] = (char)c;
        c = fgetc(f);
    }
    buf[n] = '\0';
    return n > 0; /* the single whitespace after the last token has been consumed */
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of n > 0 values; sorts a copy, so times[0] stays the first run. */
static double median(const double *v, size_t n) {
    double *c = malloc(n * sizeof *c);
    if (!c) return v[0];
    memcpy(c, v, n * sizeof *c);
    qsort(c, n, sizeof *c, cmp_double);
    double m = n % 2 ? c[n / 2] : 0.5 * (c[n / 2 - 1] + c[n / 2]);
    free(c);
    return m;
}

static int parse_int(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end != '\0' || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

static int read_ppm(const char *path, Image *img) {
    char tok[32];
    long w, h, maxval;
    FILE *f = fopen(path, "rb");
    if (!f) return fail("cannot open image %s", path);
    if (!pnm_token(f, tok, sizeof tok) || strcmp(tok, "P6") != 0) {
        fclose(f);
        return fail("%s is not a binary PPM (P6) image", path);
    }
    if (!pnm_token(f, tok, sizeof tok) || !parse_int(tok, 1, MAX_SIDE, &w) || !pnm_token(f, tok, sizeof tok) ||
        !parse_int(tok, 1, MAX_SIDE, &h) || !pnm_token(f, tok, sizeof tok) || !parse_int(tok, 1, 65535, &maxval)) {
        fclose(f);
        return fail("%s has a malformed PPM header", path);
    }
    size_t bps = maxval > 255 ? 2 : 1;
    size_t count = (size_t)w * (size_t)h * 3;
    unsigned char *raw = malloc(count * bps);
    img->rgb = malloc(count * sizeof(float));
    if (!raw || !img->rgb) {
        free(raw);
        free(img->rgb);
        img->rgb = NULL;
        fclose(f);
        return fail("out of memory reading %s", path);
    }
    size_t got = fread(raw, 1, count * bps, f);
    fclose(f);
    if (got != count * bps) {
        free(raw);
        free(img->rgb);
        img->rgb = NULL;
        return fail("%s is truncated", path);
    }
    for (size_t i = 0; i < count; i++) {
        unsigned v = bps == 2 ? ((unsigned)raw[2 * i] << 8) | raw[2 * i + 1] : raw[i];
        if (v > (unsigned)maxval) v = (unsigned)maxval;
        /* Scaled to 8-bit levels first, as unioncam reads images. */
        float level = bps == 2 ? roundf((float)v * 255.0f / (float)maxval) : (float)v * 255.0f / (float)maxval;
        img->rgb[i] = level / 255.0f;
    }
    free(raw);
    img->width = (int)w;
    img->height = (int)h;
    return 0;
}

/* Bilinear, half-pixel centres, edges clamped: one source coordinate for an output index. */
static void source_index(int out, int n_in, int n_out, int *i0, int *i1, float *frac) {
    float s = ((float)out + 0.5f) * ((float)n_in / (float)n_out) - 0.5f;
    if (s < 0.0f) s = 0.0f;
    int lo = (int)floorf(s);
    if (lo > n_in - 1) lo = n_in - 1;
    *i0 = lo;
    *i1 = lo + 1 < n_in ? lo + 1 : n_in - 1;
    *frac = s - (float)lo;
}

/* (h, w, 3) image -> (3, H, W) planar model input. */
static void resize_to_chw(const Image *img, int H, int W, float *out) {
    for (int y = 0; y < H; y++) {
        int y0, y1;
        float fy;
        source_index(y, img->height, H, &y0, &y1, &fy);
        for (int x = 0; x < W; x++) {
            int x0, x1;
            float fx;
            source_index(x, img->width, W, &x0, &x1, &fx);
            for (int c = 0; c < 3; c++) {
                const float *p = img->rgb;
                float a = p[((size_t)y0 * img->width + x0) * 3 + c], b = p[((size_t)y0 * img->width + x1) * 3 + c];
                float d = p[((size_t)y1 * img->width + x0) * 3 + c], e = p[((size_t)y1 * img->width + x1) * 3 + c];
                float top = a + (b - a) * fx, bottom = d + (e - d) * fx;
                out[((size_t)c * H + y) * W + x] = top + (bottom - top) * fy;
            }
        }
    }
}

static int write_pgm16(const char *path, const float *map, int H, int W) {
    FILE *f = fopen(path, "wb");
    if (!f) return fail("cannot write %s", path);
    fprintf(f, "P5\n%d %d\n65535\n", W, H);
    for (size_t i = 0; i < (size_t)H * W; i++) {
        float v = map[i] < 0.0f ? 0.0f : (map[i] > 1.0f ? 1.0f : map[i]);
        unsigned q = (unsigned)lroundf(v * 65535.0f);
        unsigned char be[2] = {(unsigned char)(q >> 8), (unsigned char)(q & 0xff)};
        fwrite(be, 1, 2, f);
    }
    if (fclose(f) != 0) return fail("cannot write %s", path);
    return 0;
}

static const char *OUTPUT_NAMES[] = {"cam", "denoising", "region", "de_region", "betas", "selected", "class", "score",
                                     "status", "passes"};
#define N_OUTPUTS 10

/* The graph's status output (0 ok): it checks its own input, since no Python stands in front of it. */
static const char *STATUS_MESSAGES[] = {"ok", "the image contains NaN or Inf", "the image is outside [0, 1]",
                                        "the class is out of range for this model"};

/* The session must be a unioncam end-to-end graph: input "image" (1, 3, H, W) and our outputs. */
static int check_model(OrtSession *sess, OrtAllocator *alloc, int64_t *H, int64_t *W, int *has_class) {
    size_t n_in = 0, n_out = 0;
    int ok = 0, found_image = 0, found_out = 0;
    *has_class = 0;
    if (!check(ort->SessionGetInputCount(sess, &n_in), "reading the model's inputs")) return 0;
    if (!check(ort->SessionGetOutputCount(sess, &n_out), "reading the model's outputs")) return 0;
    for (size_t i = 0; i < n_in; i++) {
        char *name = NULL;
        if (!check(ort->SessionGetInputName(sess, i, alloc, &name), "reading an input name")) return 0;
        if (strcmp(name, "class_idx") == 0) *has_class = 1;
        if (strcmp(name, "image") == 0) {
            OrtTypeInfo *ti = NULL;
            const OrtTensorTypeAndShapeInfo *tsi = NULL;
            size_t nd = 0;
            int64_t dims[4] = {0};
            if (check(ort->SessionGetInputTypeInfo(sess, i, &ti), "reading the image input") &&
                check(ort->CastTypeInfoToTensorInfo(ti, &tsi), "reading the image input") &&
                check(ort->GetDimensionsCount(tsi, &nd), "reading the image input") && nd == 4 &&
                check(ort->GetDimensions(tsi, dims, 4), "reading the image input") && dims[0] == 1 && dims[1] == 3 &&
                dims[2] > 0 && dims[3] > 0 && dims[2] <= MAX_SIDE && dims[3] <= MAX_SIDE) {
                *H = dims[2];
                *W = dims[3];
                found_image = 1;
            }
            if (ti) ort->ReleaseTypeInfo(ti);
        }
        free_name(alloc, name);
    }
    for (size_t i = 0; i < n_out; i++) {
        char *name = NULL;
        if (!check(ort->SessionGetOutputName(sess, i, alloc, &name), "reading an output name")) return 0;
        for (int k = 0; k < N_OUTPUTS; k++)
            if (strcmp(name, OUTPUT_NAMES[k]) == 0) found_out++;
        free_name(alloc, name);
    }
    ok = found_image && *has_class && found_out == N_OUTPUTS;
    if (!ok)
        fprintf(stderr, "unioncam_explain: error: this model is not a unioncam end-to-end graph (needs inputs image "
                        "(1, 3, H, W) and class_idx (1,), outputs cam, betas, selected, class, score, status, passes, "
                        "...): export one with `unioncam export --end-to-end` (an older graph without them must be "
                        "exported again)\n");
    return ok;
}

int main(int argc, char **argv) {
    long runs = 1;
    if (argc > 1 && strcmp(argv[1], "--runs") == 0) {
        if (argc < 3 || !parse_int(argv[2], 1, 1000, &runs)) {
            fprintf(stderr, "unioncam_explain: error: --runs needs a count from 1 to 1000\n");
            return 2;
        }
        argv += 2;
        argc -= 2;
    }
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: %s [--runs N] model.onnx image.ppm out.pgm [class]\n", argv[0]);
        return 2;
    }
    long cls = -1;
    if (argc == 5 && !parse_int(argv[4], 0, 1000000, &cls)) {
        fprintf(stderr, "unioncam_explain: error: class must be a non-negative integer, got %s\n", argv[4]);
        return 2;
    }
    ort = OrtGetApiBase()->GetApi(ORT_API_VERSION);
    if (!ort) {
        fprintf(stderr, "unioncam_explain: error: the ONNX Runtime library does not provide API version %d\n", ORT_API_VERSION);
        return 1;
    }
    Image img = {0, 0, NULL};
    if (read_ppm(argv[2], &img) != 0) return 1;

    int rc = 1, has_class = 0;
    int64_t H = 0, W = 0;
    OrtEnv *env = NULL;
    OrtSessionOptions *opts = NULL;
    OrtSession *sess = NULL;
    OrtAllocator *alloc = NULL;
    OrtMemoryInfo *mem = NULL;
    OrtValue *inputs[2] = {NULL, NULL};
    OrtValue *outputs[N_OUTPUTS] = {NULL};
    float *chw = NULL;
    int64_t class_value = cls;
    double *times = calloc((size_t)runs, sizeof(double));
    if (!times) {
        free(img.rgb);
        return fail("%s", "out of memory");
    }

    if (!check(ort->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "unioncam", &env), "creating the ONNX Runtime environment")) goto done;
    if (!check(ort->CreateSessionOptions(&opts), "creating session options")) goto done;
    if (!check(ort->SetSessionGraphOptimizationLevel(opts, ORT_ENABLE_ALL), "setting session options")) goto done;
    if (!check(ort->CreateSession(env, argv[1], opts, &sess), "loading the model")) goto done;
    if (!check(ort->GetAllocatorWithDefaultOptions(&alloc), "getting an allocator")) goto done;
    if (!check_model(sess, alloc, &H, &W, &has_class)) goto done;

    chw = malloc((size_t)3 * H * W * sizeof(float));
    if (!chw) {
        fprintf(stderr, "unioncam_explain: error: out of memory\n");
        goto done;
    }
    resize_to_chw(&img, (int)H, (int)W, chw);
    if (!check(ort->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &mem), "creating memory info")) goto done;
    int64_t shape[4] = {1, 3, H, W};
    if (!check(ort->CreateTensorWithDataAsOrtValue(mem, chw, (size_t)3 * H * W * sizeof(float), shape, 4,
                                                   ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &inputs[0]),
               "creating the image tensor"))
        goto done;
    int64_t cshape[1] = {1};
    if (!check(ort->CreateTensorWithDataAsOrtValue(mem, &class_value, sizeof class_value, cshape, 1,
                                                   ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, &inputs[1]),
               "creating the class tensor"))
        goto done;
    const char *in_names[2] = {"image", "class_idx"};
    /* class_idx -1 asks the graph for the arg-max class. */
    for (long r = 0; r < runs; r++) {
        for (int k = 0; k < N_OUTPUTS; k++) {
            if (outputs[k]) ort->ReleaseValue(outputs[k]);
            outputs[k] = NULL;
        }
        double t0 = now_s();
        if (!check(ort->Run(sess, NULL, in_names, (const OrtValue *const *)inputs, 2, OUTPUT_NAMES, N_OUTPUTS, outputs),
                   "running the model"))
            goto done;
        times[r] = now_s() - t0;
    }

    float *cam = NULL, *betas = NULL, *score = NULL;
    int64_t *selected = NULL, *out_class = NULL, *status = NULL, *passes = NULL;
    if (!check(ort->GetTensorMutableData(outputs[8], (void **)&status), "reading status")) goto done;
    if (status[0] != 0) {
        fprintf(stderr, "unioncam_explain: error: %s (status %lld)\n",
                status[0] > 0 && status[0] < 4 ? STATUS_MESSAGES[status[0]] : "unknown status", (long long)status[0]);
        goto done;
    }
    if (!check(ort->GetTensorMutableData(outputs[0], (void **)&cam), "reading cam") ||
        !check(ort->GetTensorMutableData(outputs[4], (void **)&betas), "reading betas") ||
        !check(ort->GetTensorMutableData(outputs[5], (void **)&selected), "reading selected") ||
        !check(ort->GetTensorMutableData(outputs[6], (void **)&out_class), "reading class") ||
        !check(ort->GetTensorMutableData(outputs[7], (void **)&score), "reading score") ||
        !check(ort->GetTensorMutableData(outputs[9], (void **)&passes), "reading passes"))
        goto done;
    for (size_t i = 0; i < (size_t)H * W; i++) {
        if (!isfinite(cam[i])) {
            fprintf(stderr, "unioncam_explain: error: the model produced a non-finite map\n");
            goto done;
        }
    }
    if (write_pgm16(argv[3], cam, (int)H, (int)W) != 0) goto done;
    printf("class %lld\nscore %.6f\nbeta_denoising %.6f\nbeta_region %.6f\nbeta_de_region %.6f\nselected %s\n"
           "masked_passes %lld\nfirst_run_s %.4f\nmedian_run_s %.4f\n",
           (long long)out_class[0], score[0], betas[0], betas[1], betas[2], selected[0] ? "de_region" : "region",
           (long long)passes[0], times[0], runs > 1 ? median(times + 1, (size_t)runs - 1) : times[0]);
    rc = 0;

done:
    for (int k = 0; k < N_OUTPUTS; k++)
        if (outputs[k]) ort->ReleaseValue(outputs[k]);
    for (int k = 0; k < 2; k++)
        if (inputs[k]) ort->ReleaseValue(inputs[k]);
    if (mem) ort->ReleaseMemoryInfo(mem);
    if (sess) ort->ReleaseSession(sess);
    if (opts) ort->ReleaseSessionOptions(opts);
    if (env) ort->ReleaseEnv(env);
    free(chw);
    free(img.rgb);
    free(times);
    return rc;
}
