/*
 * MD2 message digest and HMAC-MD2.
 * Written from the descriptions in RFC 1319 (MD2, section 3, including the
 * checksum-step erratum: C[j] ^= S[c ^ L]) and RFC 2104 (HMAC, B = 16, L = 16).
 */
#include <string.h>
#include "hmac_md2.h"

/* RFC 1319's permutation of 0..255 built from the digits of pi; generated
 * (not copied) and checked against RFC 1319's test suite. */
static const unsigned char S[256] = {
     41,  46,  67, 201, 162, 216, 124,   1,  61,  54,  84, 161, 236, 240,   6,  19,
     98, 167,   5, 243, 192, 199, 115, 140, 152, 147,  43, 217, 188,  76, 130, 202,
     30, 155,  87,  60, 253, 212, 224,  22, 103,  66, 111,  24, 138,  23, 229,  18,
    190,  78, 196, 214, 218, 158, 222,  73, 160, 251, 245, 142, 187,  47, 238, 122,
    169, 104, 121, 145,  21, 178,   7,  63, 148, 194,  16, 137,  11,  34,  95,  33,
    128, 127,  93, 154,  90, 144,  50,  39,  53,  62, 204, 231, 191, 247, 151,   3,
    255,  25,  48, 179,  72, 165, 181, 209, 215,  94, 146,  42, 172,  86, 170, 198,
     79, 184,  56, 210, 150, 164, 125, 182, 118, 252, 107, 226, 156, 116,   4, 241,
     69, 157, 112,  89, 100, 113, 135,  32, 134,  91, 207, 101, 230,  45, 168,   2,
     27,  96,  37, 173, 174, 176, 185, 246,  28,  70,  97, 105,  52,  64, 126,  15,
     85,  71, 163,  35, 221,  81, 175,  58, 195,  92, 249, 206, 186, 197, 234,  38,
     44,  83,  13, 110, 133,  40, 132,   9, 211, 223, 205, 244,  65, 129,  77,  82,
    106, 220,  55, 200, 108, 193, 171, 250,  36, 225, 123,   8,  12, 189, 177,  74,
    120, 136, 149, 139, 227,  99, 232, 109, 233, 203, 213, 254,  59,   0,  29,  57,
    242, 239, 183,  14, 102,  88, 208, 228, 166, 119, 114, 248, 235, 117,  75,  10,
     49,  68,  80, 180, 143, 237,  31,  26, 219, 153, 141,  51, 159,  17, 131,  20,
};

typedef struct {
    unsigned char x[48], c[16], buf[16], l;
    size_t n;
} md2_ctx;

/* Process one 16-byte block: update the checksum, then the 48-byte state. */
static void md2_block(md2_ctx *ctx, const unsigned char *m)
{
    unsigned int j, k, t = 0;
    for (j = 0; j < 16; j++)
        ctx->l = ctx->c[j] ^= S[m[j] ^ ctx->l];
    for (j = 0; j < 16; j++) {
        ctx->x[16 + j] = m[j];
        ctx->x[32 + j] = m[j] ^ ctx->x[j];
    }
    for (j = 0; j < 18; j++) {
        for (k = 0; k < 48; k++)
            t = ctx->x[k] ^= S[t];
        t = (t + j) & 0xff;
    }
}

static void md2_update(md2_ctx *ctx, const unsigned char *p, size_t len)
{
    while (len--) {
        ctx->buf[ctx->n++] = *p++;
        if (ctx->n == 16) {
            md2_block(ctx, ctx->buf);
            ctx->n = 0;
        }
    }
}

static void md2_final(md2_ctx *ctx, unsigned char out[16])
{
    unsigned char pad = (unsigned char)(16 - ctx->n), c[16];
    memset(ctx->buf + ctx->n, pad, pad);   /* pad with `pad` bytes of value pad */
    md2_block(ctx, ctx->buf);
    memcpy(c, ctx->c, 16);                 /* append the checksum as a last block */
    md2_block(ctx, c);
    memcpy(out, ctx->x, 16);
}

void fg_md2(const unsigned char *msg, size_t len, unsigned char out[16])
{
    md2_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    md2_update(&ctx, msg, len);
    md2_final(&ctx, out);
}

void fg_hmac_md2(const unsigned char *key, size_t key_len, const unsigned char *msg, size_t len, unsigned char out[16])
{
    unsigned char k[16] = {0}, pad[16], inner[16];
    md2_ctx ctx;
    size_t i;

    if (key_len > 16)
        fg_md2(key, key_len, k);
    else if (key_len)
        memcpy(k, key, key_len);

    memset(&ctx, 0, sizeof ctx);
    for (i = 0; i < 16; i++)
        pad[i] = k[i] ^ 0x36;
    md2_update(&ctx, pad, 16);
    md2_update(&ctx, msg, len);
    md2_final(&ctx, inner);

    memset(&ctx, 0, sizeof ctx);
    for (i = 0; i < 16; i++)
        pad[i] = k[i] ^ 0x5c;
    md2_update(&ctx, pad, 16);
    md2_update(&ctx, inner, 16);
    md2_final(&ctx, out);
}
