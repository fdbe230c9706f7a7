/*
 * A wrun task module in C, written from guest-sdk/ABI.md alone (no SDK):
 * the tests build it with Debian's clang through exactly the recipe that
 * page gives, and run it through the same tests as the WAT module.
 *
 *   clang --target=wasm32-wasi -mexec-model=reactor -O2 -o tasks.wasm tasks.c
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The reply record the host reads: status, pointer, length (ABI.md §3). */
struct reply {
    uint32_t status;
    uint32_t ptr;
    uint32_t len;
};
static struct reply reply;

static struct reply *answer_with(uint32_t status, const void *data, uint32_t len) {
    reply.status = status;
    reply.ptr = (uint32_t)(uintptr_t)data;
    reply.len = len;
    return &reply;
}

/* The host writes the arguments where this returns (ABI.md §2). Nothing is
 * ever freed: the instance goes away after the task. */
__attribute__((export_name("wrun_alloc"))) void *wrun_alloc(size_t len) {
    return malloc(len ? len : 1);
}

/* answer() -> u64: 42, a positive fixint. */
__attribute__((export_name("wrun.task.answer"))) struct reply *answer(const uint8_t *args,
                                                                      size_t len) {
    static const uint8_t forty_two = 0x2a;
    (void)args;
    (void)len;
    return answer_with(0, &forty_two, 1);
}

/* echo(value: any) -> any: the arguments are a one-element array (header
 * 0x91), so the value is what follows the header. */
__attribute__((export_name("wrun.task.echo"))) struct reply *echo(const uint8_t *args,
                                                                  size_t len) {
    return answer_with(0, args + 1, (uint32_t)len - 1);
}

/* refuse() -> unit: a task error with a message. */
__attribute__((export_name("wrun.task.refuse"))) struct reply *refuse(const uint8_t *args,
                                                                      size_t len) {
    static const char message[] = "refused by hand";
    (void)args;
    (void)len;
    return answer_with(1, message, sizeof message - 1);
}

/* Reads one MessagePack integer at *p. The host sends integers in their
 * smallest form (ABI.md §4): fixints, or uint/int of 8 to 64 bits. */
static int read_int(const uint8_t **p, const uint8_t *end, int64_t *out) {
    if (*p >= end) return 0;
    uint8_t marker = *(*p)++;
    if (marker <= 0x7f) { *out = marker; return 1; }
    if (marker >= 0xe0) { *out = (int8_t)marker; return 1; }
    int width;
    int is_signed;
    switch (marker) {
    case 0xcc: width = 1; is_signed = 0; break;
    case 0xcd: width = 2; is_signed = 0; break;
    case 0xce: width = 4; is_signed = 0; break;
    case 0xcf: width = 8; is_signed = 0; break;
    case 0xd0: width = 1; is_signed = 1; break;
    case 0xd1: width = 2; is_signed = 1; break;
    case 0xd2: width = 4; is_signed = 1; break;
    case 0xd3: width = 8; is_signed = 1; break;
    default: return 0;
    }
    if (end - *p < width) return 0;
    uint64_t v = 0;
    for (int i = 0; i < width; i++) v = (v << 8) | *(*p)++;
    if (is_signed && width < 8 && (v >> (8 * width - 1))) v |= ~0ULL << (8 * width);
    *out = (int64_t)v;
    return 1;
}

/* add(x: i64, y: i64) -> i64, the sum always as an int64 (0xd3). */
__attribute__((export_name("wrun.task.add"))) struct reply *add(const uint8_t *args, size_t len) {
    static const char bad[] = "add takes two integers";
    static uint8_t out[9];
    const uint8_t *p = args, *end = args + len;
    int64_t x, y;
    if (len < 1 || *p++ != 0x92 || !read_int(&p, end, &x) || !read_int(&p, end, &y))
        return answer_with(2, bad, sizeof bad - 1);
    uint64_t sum = (uint64_t)x + (uint64_t)y;
    out[0] = 0xd3;
    for (int i = 0; i < 8; i++) out[1 + i] = (uint8_t)(sum >> (56 - 8 * i));
    return answer_with(0, out, sizeof out);
}

/* The task declarations: a custom section named wrun.tasks. With clang,
 * __attribute__((section(...))) makes a data segment, which the linker
 * drops; an assembler section named .custom_section.<name> becomes the
 * custom section <name> (ABI.md §8). */
__asm__(
    ".section .custom_section.wrun.tasks,\"\",@\n"
    ".ascii \"{\\\"abi\\\":1,\\\"name\\\":\\\"answer\\\",\\\"params\\\":[],\\\"returns\\\":\\\"u64\\\"}\\n\"\n"
    ".ascii \"{\\\"abi\\\":1,\\\"name\\\":\\\"echo\\\",\\\"params\\\":[{\\\"name\\\":\\\"value\\\",\\\"type\\\":\\\"any\\\"}],\\\"returns\\\":\\\"any\\\"}\\n\"\n"
    ".ascii \"{\\\"abi\\\":1,\\\"name\\\":\\\"refuse\\\",\\\"params\\\":[],\\\"returns\\\":\\\"unit\\\"}\\n\"\n"
    ".ascii \"{\\\"abi\\\":1,\\\"name\\\":\\\"add\\\",\\\"params\\\":[{\\\"name\\\":\\\"x\\\",\\\"type\\\":\\\"i64\\\"},{\\\"name\\\":\\\"y\\\",\\\"type\\\":\\\"i64\\\"}],\\\"returns\\\":\\\"i64\\\"}\\n\"\n"
    ".text\n");
