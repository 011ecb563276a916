/* Feature extraction: one pass over every byte (token estimate, scripts, PII, code fences, math
 * symbols) plus a word scan over bounded windows of the instruction text (kind cues, language
 * votes, sizes the text describes). The windows have a fixed size, so the cost is linear in the
 * prompt with a small constant for the word scan.
 */
#include <stdint.h>
#include <string.h>

#include "router_internal.h"

/* Window sizes in bytes: the instruction is almost always at the head of a message, sometimes
 * at its tail ("... Is the claim supported?"), rarely in the middle of a pasted passage. */
enum {
    WIN_SYSTEM = 400,
    WIN_HEAD = 400,
    WIN_TAIL = 200,
    WIN_FIRST_USER = 240,
};

/* Code point classes counted by the byte pass. */
enum script {
    SC_LATIN,
    SC_HAN,
    SC_KANA,
    SC_HANGUL,
    SC_CYRILLIC,
    SC_GREEK,
    SC_ARABIC,
    SC_HEBREW,
    SC_DEVANAGARI,
    SC_BENGALI,
    SC_GURMUKHI,
    SC_GUJARATI,
    SC_TAMIL,
    SC_TELUGU,
    SC_KANNADA,
    SC_MALAYALAM,
    SC_SINHALA,
    SC_THAI,
    SC_LAO,
    SC_MYANMAR,
    SC_ETHIOPIC,
    SC_KHMER,
    SC_N
};

static const struct {
    const char *name; /* tg_route_features.script */
    const char *lang; /* language when this script dominates */
} SCRIPTS[SC_N] = {
    [SC_LATIN] = {"latin", "en"},
    [SC_HAN] = {"han", "zh"},
    [SC_KANA] = {"kana", "ja"},
    [SC_HANGUL] = {"hangul", "ko"},
    [SC_CYRILLIC] = {"cyrillic", "ru"},
    [SC_GREEK] = {"greek", "el"},
    [SC_ARABIC] = {"arabic", "ar"},
    [SC_HEBREW] = {"hebrew", "he"},
    [SC_DEVANAGARI] = {"devanagari", "hi"},
    [SC_BENGALI] = {"bengali", "bn"},
    [SC_GURMUKHI] = {"gurmukhi", "pa"},
    [SC_GUJARATI] = {"gujarati", "gu"},
    [SC_TAMIL] = {"tamil", "ta"},
    [SC_TELUGU] = {"telugu", "te"},
    [SC_KANNADA] = {"kannada", "kn"},
    [SC_MALAYALAM] = {"malayalam", "ml"},
    [SC_SINHALA] = {"sinhala", "si"},
    [SC_THAI] = {"thai", "th"},
    [SC_LAO] = {"lao", "lo"},
    [SC_MYANMAR] = {"myanmar", "my"},
    [SC_ETHIOPIC] = {"ethiopic", "am"},
    [SC_KHMER] = {"khmer", "km"},
};

struct bytestats {
    size_t ascii, cp2, cp3, cp4;
    size_t script[SC_N];
    size_t vi_marks, yo_marks; /* letters specific to Vietnamese / Yoruba */
    size_t math;               /* math symbols: ∫ ∑ √ ≤ ℝ ... and '^' */
};

static int script_of(uint32_t cp)
{
    if (cp < 0x0250)
        return SC_LATIN;
    if (cp >= 0x1E00 && cp <= 0x1EFF)
        return SC_LATIN;
    if (cp >= 0x0370 && cp <= 0x03FF)
        return SC_GREEK;
    if (cp >= 0x0400 && cp <= 0x052F)
        return SC_CYRILLIC;
    if (cp >= 0x0590 && cp <= 0x05FF)
        return SC_HEBREW;
    if (cp >= 0x0600 && cp <= 0x06FF)
        return SC_ARABIC;
    if (cp >= 0x0900 && cp <= 0x0DFF) {
        static const int INDIC[] = {
            SC_DEVANAGARI, SC_BENGALI, SC_GURMUKHI, SC_GUJARATI,  -1,
            SC_TAMIL,      SC_TELUGU,  SC_KANNADA,  SC_MALAYALAM, SC_SINHALA};
        return INDIC[(cp - 0x0900) >> 7];
    }
    if (cp >= 0x0E00 && cp <= 0x0E7F)
        return SC_THAI;
    if (cp >= 0x0E80 && cp <= 0x0EFF)
        return SC_LAO;
    if (cp >= 0x1000 && cp <= 0x109F)
        return SC_MYANMAR;
    if (cp >= 0x1200 && cp <= 0x139F)
        return SC_ETHIOPIC;
    if (cp >= 0x1780 && cp <= 0x17FF)
        return SC_KHMER;
    if (cp >= 0x3040 && cp <= 0x30FF)
        return SC_KANA;
    if ((cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF))
        return SC_HAN;
    if (cp >= 0xAC00 && cp <= 0xD7AF)
        return SC_HANGUL;
    return -1;
}

static void count_cp(struct bytestats *b, uint32_t cp)
{
    int sc = script_of(cp);
    if (sc >= 0) {
        b->script[sc]++;
        if (sc != SC_LATIN)
            return;
        /* Vietnamese: horned/breve letters and đ; the stacked tone letters of U+1EA0-1EF9
         * except ẹ/ọ, which Yoruba uses too. Yoruba: ṣ and combining tone marks. */
        if (cp == 0x01A0 || cp == 0x01A1 || cp == 0x01AF || cp == 0x01B0 || cp == 0x0110 ||
            cp == 0x0111 || cp == 0x0102 || cp == 0x0103)
            b->vi_marks++;
        else if (cp == 0x1EB8 || cp == 0x1EB9 || cp == 0x1ECC || cp == 0x1ECD)
            b->yo_marks++;
        else if (cp == 0x1E62 || cp == 0x1E63)
            b->yo_marks += 2;
        else if (cp >= 0x1EA0 && cp <= 0x1EF9)
            b->vi_marks++;
        return;
    }
    if ((cp >= 0x2200 && cp <= 0x22FF) || cp == 0x211D || cp == 0x2115 || cp == 0x2124 ||
        cp == 0x2102 || (cp >= 0x2070 && cp <= 0x209F))
        b->math++;
    else if (cp == 0x0300 || cp == 0x0301)
        b->yo_marks++;
}

/* The every-byte pass. ASCII runs are skipped eight bytes at a time (most prompts are mostly
 * ASCII); ASCII bytes all count as Latin script, which is what they are in practice. Invalid
 * UTF-8 bytes count as 4-byte-ish (the tokenizer falls back to bytes for them). */
static void scan_bytes(const char *s, size_t n, struct bytestats *b)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, ascii = 0;
    for (const unsigned char *q = memchr(p, '^', n); q != NULL;
         q = memchr(q + 1, '^', n - (size_t)(q + 1 - p)))
        b->math++;
    while (i < n) {
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (w & 0x8080808080808080ULL)
                break;
            i += 8;
            ascii += 8;
        }
        if (i >= n)
            break;
        unsigned c = p[i];
        if (c < 0x80) {
            ascii++;
            i++;
            continue;
        }
        uint32_t cp;
        size_t len;
        if (c >= 0xC2 && c <= 0xDF && i + 1 < n && (p[i + 1] & 0xC0) == 0x80) {
            cp = ((c & 0x1Fu) << 6) | (p[i + 1] & 0x3Fu);
            len = 2;
            b->cp2++;
        } else if (c >= 0xE0 && c <= 0xEF && i + 2 < n && (p[i + 1] & 0xC0) == 0x80 &&
                   (p[i + 2] & 0xC0) == 0x80) {
            cp = ((c & 0x0Fu) << 12) | ((p[i + 1] & 0x3Fu) << 6) | (p[i + 2] & 0x3Fu);
            len = 3;
            b->cp3++;
        } else if (c >= 0xF0 && c <= 0xF4 && i + 3 < n && (p[i + 1] & 0xC0) == 0x80 &&
                   (p[i + 2] & 0xC0) == 0x80 && (p[i + 3] & 0xC0) == 0x80) {
            cp = ((c & 0x07u) << 18) | ((p[i + 1] & 0x3Fu) << 12) | ((p[i + 2] & 0x3Fu) << 6) |
                 (p[i + 3] & 0x3Fu);
            len = 4;
            b->cp4++;
        } else {
            b->cp4++;
            i++;
            continue;
        }
        count_cp(b, cp);
        i += len;
    }
    b->ascii += ascii;
    b->script[SC_LATIN] += ascii;
}

static int64_t tokens_of(const struct bytestats *b)
{
    return (int64_t)((b->ascii + 3) / 4 + b->cp2 / 2 + b->cp3 + 2 * b->cp4);
}

int64_t tg_router_estimate_tokens(const char *text, size_t len)
{
    if (text == NULL)
        return 0;
    struct bytestats b;
    memset(&b, 0, sizeof b);
    scan_bytes(text, len, &b);
    return tokens_of(&b);
}

/* ---- PII ------------------------------------------------------------------------------- */

static bool is_alnum(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool has_email(const char *s, size_t n)
{
    const char *end = s + n;
    for (const char *at = memchr(s, '@', n); at != NULL;
         at = memchr(at + 1, '@', (size_t)(end - at - 1))) {
        if (at == s || !(is_alnum((unsigned char)at[-1]) || at[-1] == '.' || at[-1] == '_' ||
                         at[-1] == '-' || at[-1] == '+'))
            continue;
        /* domain: labels of [A-Za-z0-9-] separated by dots, last label >= 2 letters */
        const char *q = at + 1;
        int dots = 0;
        size_t label = 0;
        bool alpha_label = true;
        while (q < end && (is_alnum((unsigned char)*q) || *q == '-' || *q == '.')) {
            if (*q == '.') {
                if (label == 0)
                    break;
                dots++;
                label = 0;
                alpha_label = true;
            } else {
                label++;
                if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z')))
                    alpha_label = false;
            }
            q++;
        }
        if (dots > 0 && label >= 2 && alpha_label)
            return true;
        if (dots > 1 && label == 0 && q[-1] == '.')
            return true; /* "name@example.com." at the end of a sentence */
        if (at + 1 >= end)
            break;
    }
    return false;
}

static bool luhn_ok(const char *d, size_t n)
{
    unsigned sum = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned v = (unsigned)(d[n - 1 - i] - '0');
        if (i % 2 == 1) {
            v *= 2;
            if (v > 9)
                v -= 9;
        }
        sum += v;
    }
    return sum % 10 == 0;
}

/* IBAN at s (two capital letters, two digits, then BBAN alnum with optional single spaces). */
static bool iban_at(const char *s, const char *end)
{
    char buf[40];
    size_t n = 0;
    const char *p = s;
    while (p < end && n < 34) {
        if (is_alnum((unsigned char)*p)) {
            char c = *p;
            if (c >= 'a' && c <= 'z')
                return false; /* IBANs are written in capitals */
            buf[n++] = c;
            p++;
        } else if (*p == ' ' && p + 1 < end && is_alnum((unsigned char)p[1]) && n % 4 == 0) {
            p++;
        } else {
            break;
        }
    }
    if (n < 15)
        return false;
    /* mod 97 of BBAN + country + check, letters as 10..35 */
    unsigned rem = 0;
    for (size_t k = 0; k < n; k++) {
        char c = buf[(k + 4) % n];
        if (c >= '0' && c <= '9') {
            rem = (rem * 10 + (unsigned)(c - '0')) % 97;
        } else {
            unsigned v = (unsigned)(c - 'A') + 10;
            rem = (rem * 100 + v) % 97;
        }
    }
    return rem == 1;
}

/* Digit runs with single ' ', '-' or '.' separators: cards, SSNs, phones; IBANs start here. */
static unsigned scan_digit_pii(const char *s, size_t n)
{
    unsigned found = 0;
    const char *end = s + n;
    const char *p = s;
    while (p < end) {
        if (!(*p >= '0' && *p <= '9')) {
            p++;
            continue;
        }
        if (p >= s + 2 && p[-1] >= 'A' && p[-1] <= 'Z' && p[-2] >= 'A' && p[-2] <= 'Z' &&
            (p == s + 2 || !is_alnum((unsigned char)p[-3])) && iban_at(p - 2, end))
            found |= TG_ROUTE_PII_IBAN;
        bool word_start = p == s || !is_alnum((unsigned char)p[-1]);
        bool plus = p > s && (p[-1] == '+' || p[-1] == '(');
        char digits[24];
        size_t nd = 0, nsep = 0;
        size_t groups[8], ng = 0, glen = 0;
        char sep = 0;
        bool consistent = true;
        const char *q = p;
        while (q < end) {
            if (*q >= '0' && *q <= '9') {
                if (nd < sizeof digits)
                    digits[nd] = *q;
                nd++;
                glen++;
                q++;
            } else if ((*q == ' ' || *q == '-' || *q == '.' || *q == ')') && q + 1 < end &&
                       ((q[1] >= '0' && q[1] <= '9') || (*q == ')' && q[1] == ' '))) {
                if (sep != 0 && *q != sep && *q != ')' && sep != ')')
                    consistent = false;
                sep = *q;
                nsep++;
                if (ng < 8)
                    groups[ng++] = glen;
                glen = 0;
                q++;
                if (*q == ' ')
                    q++;
            } else {
                break;
            }
        }
        if (ng < 8)
            groups[ng++] = glen;
        bool word_end = q >= end || !is_alnum((unsigned char)*q);
        if (word_start && word_end) {
            if (nd >= 13 && nd <= 19 && consistent && sep != '.' && luhn_ok(digits, nd))
                found |= TG_ROUTE_PII_CARD;
            else if (nd == 9 && ng == 3 && sep == '-' && groups[0] == 3 && groups[1] == 2 &&
                     groups[2] == 4 &&
                     !(digits[0] == '0' && digits[1] == '0' && digits[2] == '0') &&
                     digits[0] != '9')
                found |= TG_ROUTE_PII_SSN;
            /* the last test keeps the digit groups of an IBAN's BBAN from counting */
            else if (nd >= 9 && nd <= 15 && (nsep > 0 || plus) && sep != '.' &&
                     !(p >= s + 2 && p[-1] == ' ' && p[-2] >= 'A' && p[-2] <= 'Z'))
                found |= TG_ROUTE_PII_PHONE;
        }
        p = q;
    }
    return found;
}

/* ---- Word scan ------------------------------------------------------------------------- */

struct wordscan {
    const struct lex_table *lex;
    float ev[TG_ROUTE_N_KINDS];
    unsigned votes[LANG_N];
    int64_t described_tokens;
    int64_t output_words;
    bool first_is_wh;
    size_t n_numbers;
    size_t caps_pairs;
    char target_lang[4];
};

/* Byte classes for the word scanner. */
enum { CC_SEP, CC_LOWER, CC_UPPER, CC_DIGIT, CC_SYM, CC_APOS, CC_HIGH };
static const unsigned char CHAR_CLASS[256] = {
    ['0'] = CC_DIGIT, ['1'] = CC_DIGIT, ['2'] = CC_DIGIT, ['3'] = CC_DIGIT, ['4'] = CC_DIGIT,
    ['5'] = CC_DIGIT, ['6'] = CC_DIGIT, ['7'] = CC_DIGIT, ['8'] = CC_DIGIT, ['9'] = CC_DIGIT,
    ['a'] = CC_LOWER, ['b'] = CC_LOWER, ['c'] = CC_LOWER, ['d'] = CC_LOWER, ['e'] = CC_LOWER,
    ['f'] = CC_LOWER, ['g'] = CC_LOWER, ['h'] = CC_LOWER, ['i'] = CC_LOWER, ['j'] = CC_LOWER,
    ['k'] = CC_LOWER, ['l'] = CC_LOWER, ['m'] = CC_LOWER, ['n'] = CC_LOWER, ['o'] = CC_LOWER,
    ['p'] = CC_LOWER, ['q'] = CC_LOWER, ['r'] = CC_LOWER, ['s'] = CC_LOWER, ['t'] = CC_LOWER,
    ['u'] = CC_LOWER, ['v'] = CC_LOWER, ['w'] = CC_LOWER, ['x'] = CC_LOWER, ['y'] = CC_LOWER,
    ['z'] = CC_LOWER, ['A'] = CC_UPPER, ['B'] = CC_UPPER, ['C'] = CC_UPPER, ['D'] = CC_UPPER,
    ['E'] = CC_UPPER, ['F'] = CC_UPPER, ['G'] = CC_UPPER, ['H'] = CC_UPPER, ['I'] = CC_UPPER,
    ['J'] = CC_UPPER, ['K'] = CC_UPPER, ['L'] = CC_UPPER, ['M'] = CC_UPPER, ['N'] = CC_UPPER,
    ['O'] = CC_UPPER, ['P'] = CC_UPPER, ['Q'] = CC_UPPER, ['R'] = CC_UPPER, ['S'] = CC_UPPER,
    ['T'] = CC_UPPER, ['U'] = CC_UPPER, ['V'] = CC_UPPER, ['W'] = CC_UPPER, ['X'] = CC_UPPER,
    ['Y'] = CC_UPPER, ['Z'] = CC_UPPER, ['+'] = CC_SYM,   ['#'] = CC_SYM,   ['\''] = CC_APOS,
#define HI16(b)                                                                                    \
    [b] = CC_HIGH, [b + 1] = CC_HIGH, [b + 2] = CC_HIGH, [b + 3] = CC_HIGH, [b + 4] = CC_HIGH,     \
    [b + 5] = CC_HIGH, [b + 6] = CC_HIGH, [b + 7] = CC_HIGH, [b + 8] = CC_HIGH, [b + 9] = CC_HIGH, \
    [b + 10] = CC_HIGH, [b + 11] = CC_HIGH, [b + 12] = CC_HIGH, [b + 13] = CC_HIGH,                \
    [b + 14] = CC_HIGH, [b + 15] = CC_HIGH
    HI16(0x80),       HI16(0x90),       HI16(0xA0),       HI16(0xB0),       HI16(0xC0),
    HI16(0xD0),       HI16(0xE0),       HI16(0xF0),
#undef HI16
};

/* A byte that ends a word: ASCII other than alnum/'+'/'#', and the UTF-8 punctuation blocks
 * (U+2000-206F general punctuation, U+3000-303F CJK punctuation, Latin-1 punctuation). */
static size_t separator_len(const unsigned char *p, size_t left)
{
    unsigned c = p[0];
    if (c < 0x80)
        return (is_alnum((unsigned char)c) || c == '+' || c == '#') ? 0 : 1;
    if (c == 0xC2 && left >= 2 && p[1] >= 0xA0 && p[1] <= 0xBF)
        return 2; /* « » ¿ ¡ NBSP ° */
    if (c == 0xC3 && left >= 2 && (p[1] == 0x97 || p[1] == 0xB7))
        return 2; /* × ÷ */
    if (c == 0xE2 && left >= 3 && (p[1] == 0x80 || p[1] == 0x81 || p[1] == 0x86 || p[1] == 0x88))
        return 3; /* general punctuation, arrows, math operators */
    if (c == 0xE3 && left >= 3 && p[1] == 0x80)
        return 3; /* 「」、。 */
    if (c == 0xEF && left >= 3 && (p[1] == 0xBC || p[1] == 0xBD))
        return 3; /* fullwidth ？！：（） */
    return 0;
}

static bool is_apostrophe(const unsigned char *p, size_t left, size_t *len)
{
    if (p[0] == '\'') {
        *len = 1;
        return true;
    }
    if (left >= 3 && p[0] == 0xE2 && p[1] == 0x80 && p[2] == 0x99) {
        *len = 3;
        return true;
    }
    return false;
}

static void apply_unit(struct wordscan *ws, int role, int64_t v)
{
    switch (role) {
    case ROLE_UNIT_WORDS:
        /* nobody asks a chat model for 5,000 words: a big number describes the input */
        if (v >= 5000) {
            if (v * 4 / 3 > ws->described_tokens)
                ws->described_tokens = v * 4 / 3;
        } else if (v > ws->output_words) {
            ws->output_words = v;
        }
        break;
    case ROLE_UNIT_TOKENS:
        if (v >= 1000 && v > ws->described_tokens)
            ws->described_tokens = v;
        else if (v < 1000 && v * 3 / 4 > ws->output_words)
            ws->output_words = v * 3 / 4;
        break;
    case ROLE_UNIT_PAGES:
        if (v >= 20 && v * 500 > ws->described_tokens)
            ws->described_tokens = v * 500;
        break;
    case ROLE_UNIT_LINES:
        if (v >= 2000 && v * 10 > ws->described_tokens)
            ws->described_tokens = v * 10;
        break;
    default:
        break;
    }
}

/* Scan words of s[0..n): kind cues weighted by mult, language votes when `votes`. */
static void scan_words(struct wordscan *ws, const char *s, size_t n, float mult, bool votes,
                       bool first_window)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    uint64_t prev1 = 0, prev2 = 0; /* hash of previous word, of previous two words */
    int64_t last_num = -1;
    int since_num = 99; /* words since the last number */
    unsigned char sep_char = 0;
    size_t sep_count = 0;
    int64_t prev_num_value = -1;
    bool prev_was_num = false;
    size_t n_words = 0;
    bool prev_caps = false, or_after_caps = false;
    bool in_code = false;
    const float code_mult = mult * 0.3f;
    while (i < n) {
        unsigned cc0 = CHAR_CLASS[p[i]];
        size_t sl = cc0 == CC_SEP || cc0 == CC_APOS ? 1
                    : cc0 == CC_HIGH                ? separator_len(p + i, n - i)
                                                    : 0;
        if (sl > 0) {
            if (p[i] == '`' && i + 2 < n && p[i + 1] == '`' && p[i + 2] == '`') {
                /* a fenced block: code words are not instructions */
                in_code = !in_code;
                i += 3;
                prev1 = prev2 = 0;
                continue;
            }
            sep_char = p[i];
            sep_count++;
            if (p[i] == '.' || p[i] == '?' || p[i] == '!' || p[i] == '\n' || p[i] == ';' ||
                p[i] == '(' || p[i] == ')' || p[i] == '"') {
                /* n-grams do not run across sentences or quotes */
                prev1 = prev2 = 0;
            }
            i += sl;
            continue;
        }
        /* a word: lower-cased into w (apostrophes dropped) and hashed as it is copied; only
         * the first sizeof w bytes count (no cue is that long) */
        char w[48];
        size_t wn = 0;
        uint64_t h1 = LEX_FNV_OFFSET;
        bool all_digits = true;
        size_t n_upper = 0, n_lower = 0;
        size_t start = i;
        while (i < n) {
            unsigned char c = p[i];
            unsigned cc = CHAR_CLASS[c];
            if (cc == CC_SEP)
                break;
            if (cc == CC_UPPER) {
                c = (unsigned char)(c + 32);
                n_upper++;
                all_digits = false;
            } else if (cc == CC_LOWER || cc == CC_SYM) {
                n_lower += cc == CC_LOWER;
                all_digits = false;
            } else if (cc == CC_APOS) {
                /* inside a word ("what's") it is dropped; otherwise it ends the word */
                if (i + 1 < n && CHAR_CLASS[p[i + 1]] != CC_SEP &&
                    CHAR_CLASS[p[i + 1]] != CC_APOS) {
                    i++;
                    continue;
                }
                break;
            } else if (cc == CC_HIGH) {
                size_t al;
                if (is_apostrophe(p + i, n - i, &al)) {
                    if (i > start && i + al < n && separator_len(p + i + al, n - i - al) == 0) {
                        i += al;
                        continue;
                    }
                    break;
                }
                if (separator_len(p + i, n - i) > 0)
                    break;
                all_digits = false;
                if (c == 0xC3 && i + 1 < n && p[i + 1] >= 0x80 && p[i + 1] <= 0x9E &&
                    p[i + 1] != 0x97) {
                    /* Latin-1 capitals À..Þ -> à..þ */
                    if (wn + 2 <= sizeof w) {
                        unsigned char lo = (unsigned char)(p[i + 1] + 0x20);
                        w[wn++] = (char)0xC3;
                        w[wn++] = (char)lo;
                        h1 = ((h1 ^ 0xC3u) * LEX_FNV_PRIME ^ lo) * LEX_FNV_PRIME;
                    }
                    n_upper++;
                    i += 2;
                    continue;
                }
            }
            if (wn < sizeof w) {
                w[wn++] = (char)c;
                h1 = (h1 ^ c) * LEX_FNV_PRIME;
            }
            i++;
        }
        h1 |= 1;
        if (wn == 0)
            continue;
        n_words++;
        /* a list of labels in capitals: "SPAM or NOT_SPAM", "HOT, WARM or COLD" */
        bool caps = n_upper >= 2 && n_lower == 0 && !in_code;
        bool is_or = wn == 2 && w[0] == 'o' && w[1] == 'r';
        if (caps && (prev_caps || or_after_caps))
            ws->caps_pairs++;
        or_after_caps = is_or && prev_caps;
        prev_caps = caps;
        /* numbers: "1,200" joins, "180k" scales */
        int64_t num = -1;
        if (all_digits && wn <= 12) {
            num = 0;
            for (size_t k = 0; k < wn; k++)
                num = num * 10 + (w[k] - '0');
            if (prev_was_num && sep_count == 1 && (sep_char == ',' || sep_char == '.') && wn == 3 &&
                prev_num_value >= 0 && prev_num_value < 1000000)
                num = prev_num_value * 1000 + num;
        } else if (wn >= 2 && wn <= 10 && w[wn - 1] == 'k') {
            bool digits = true;
            int64_t v = 0;
            for (size_t k = 0; k + 1 < wn; k++) {
                if (!(w[k] >= '0' && w[k] <= '9')) {
                    digits = false;
                    break;
                }
                v = v * 10 + (w[k] - '0');
            }
            if (digits)
                num = v * 1000;
        }
        sep_count = 0;
        if (num >= 0) {
            if (!prev_was_num)
                ws->n_numbers++;
            last_num = num;
            since_num = 0;
            prev_num_value = num;
            prev_was_num = true;
        } else {
            prev_was_num = false;
            since_num++;
        }

        uint64_t h2 = prev1 ? lex_ngram(prev1, h1) : 0;
        uint64_t h3 = prev2 ? lex_ngram(prev2, h1) : 0;
        uint64_t hs[3] = {h1, h2, h3};
        for (int k = 0; k < 3; k++) {
            if (hs[k] == 0)
                continue;
            const struct lex_slot *sl2 = tg_router_lex_find(ws->lex, hs[k]);
            if (sl2 == NULL)
                continue;
            for (uint8_t c = 0; c < sl2->n_cues; c++)
                ws->ev[sl2->kinds[c]] += sl2->weights[c] * (in_code ? code_mult : mult);
            if (k == 0) {
                if (votes && sl2->langs) {
                    for (unsigned l = 0; l < LANG_N; l++)
                        if (sl2->langs & (1u << l))
                            ws->votes[l]++;
                }
                if (sl2->role >= ROLE_UNIT_WORDS && sl2->role <= ROLE_UNIT_LINES &&
                    since_num <= 2 && last_num > 0)
                    apply_unit(ws, sl2->role, last_num);
                else if (sl2->role == ROLE_WH && first_window && n_words == 1)
                    ws->first_is_wh = true;
                else if (sl2->role == ROLE_LANGNAME && ws->target_lang[0] == '\0')
                    memcpy(ws->target_lang, sl2->langname, 3);
            }
        }
        prev2 = h2;
        prev1 = h1;
    }
}

static void scan_substr_cues(struct wordscan *ws, const char *s, size_t n, float mult)
{
    size_t nc;
    const struct lex_substr *cues = tg_router_lex_substrs(&nc);
    for (size_t k = 0; k < nc; k++) {
        if (memmem(s, n, cues[k].text, strlen(cues[k].text)) != NULL)
            ws->ev[cues[k].kind] += cues[k].weight * mult;
    }
}

static bool is_role(const struct tg_route_message *m, const char *role)
{
    const char *r = m->role != NULL ? m->role : "user";
    return strcmp(r, role) == 0;
}

static bool is_system(const struct tg_route_message *m)
{
    return m->role != NULL && (strcmp(m->role, "system") == 0 || strcmp(m->role, "developer") == 0);
}

/* Where the passage starts in an instruction+passage message: after the first blank line,
 * ":\n", or an opening quote; 0 when none is found. */
static size_t passage_start(const char *s, size_t n)
{
    size_t lim = n < 600 ? n : 600;
    for (size_t i = 8; i + 1 < lim; i++) {
        if (s[i] == '\n' && (s[i + 1] == '\n' || s[i - 1] == ':'))
            return i + 1;
        if (s[i] == ':' && s[i + 1] == '\n')
            return i + 2;
        if (s[i] == '"' && i > 0 && (s[i - 1] == ' ' || s[i - 1] == ':'))
            return i;
        unsigned char c = (unsigned char)s[i];
        if (c == 0xE2 && i + 2 < n && (unsigned char)s[i + 1] == 0x80 &&
            ((unsigned char)s[i + 2] == 0x9C || (unsigned char)s[i + 2] == 0x9E))
            return i; /* “ „ */
        if (c == 0xC2 && (unsigned char)s[i + 1] == 0xAB)
            return i; /* « */
        if (c == 0xE3 && i + 2 < n && (unsigned char)s[i + 1] == 0x80 &&
            (unsigned char)s[i + 2] == 0x8C)
            return i; /* 「 */
    }
    return 0;
}

static void window(struct wordscan *ws, const char *s, size_t n, size_t head, size_t tail,
                   float mult, bool votes, bool first, bool cjk)
{
    size_t h = n < head ? n : head;
    /* cut at a word boundary is not needed: a split word simply fails to match */
    scan_words(ws, s, h, mult, votes, first);
    if (cjk)
        scan_substr_cues(ws, s, h, mult);
    if (tail > 0 && n > h) {
        size_t t0 = n - h > tail ? n - tail : h;
        scan_words(ws, s + t0, n - t0, mult * 0.7f, false, false);
        if (cjk)
            scan_substr_cues(ws, s + t0, n - t0, mult * 0.7f);
    }
}

/* Scan [a, b) with cues inside the passage [ps, pe) down-weighted: words of the text to work
 * on ("... the Legal team ...") say little about the task. */
static void scan_region(struct wordscan *ws, const char *s, size_t a, size_t b, size_t ps,
                        size_t pe, float mult, bool votes, bool first, bool cjk)
{
    size_t cut[4] = {a, a, b, b};
    if (ps > 0 && ps < pe) {
        cut[1] = ps < a ? a : ps > b ? b : ps;
        cut[2] = pe < cut[1] ? cut[1] : pe > b ? b : pe;
    } else {
        cut[1] = cut[2] = b;
    }
    for (int r = 0; r < 3; r++) {
        if (cut[r + 1] <= cut[r])
            continue;
        float m = r == 1 ? mult * 0.4f : mult;
        scan_words(ws, s + cut[r], cut[r + 1] - cut[r], m, votes, first && cut[r] == 0);
        if (cjk)
            scan_substr_cues(ws, s + cut[r], cut[r + 1] - cut[r], m);
    }
}

static void scan_last_user(struct wordscan *ws, const char *s, size_t n, size_t ps, size_t pe,
                           bool cjk)
{
    size_t h = n < WIN_HEAD ? n : WIN_HEAD;
    scan_region(ws, s, 0, h, ps, pe, 1.0f, true, true, cjk);
    if (n > h) {
        size_t t0 = n - h > WIN_TAIL ? n - WIN_TAIL : h;
        scan_region(ws, s, t0, n, ps, pe, 0.7f, false, false, cjk);
    }
}

static void lang_of(const struct bytestats *b, const struct wordscan *ws, char out[4],
                    const char **script)
{
    size_t best = 0;
    int best_sc = -1;
    for (int sc = 0; sc < SC_N; sc++) {
        if (b->script[sc] > best) {
            best = b->script[sc];
            best_sc = sc;
        }
    }
    if (best_sc < 0) {
        memcpy(out, "und", 4);
        *script = "none";
        return;
    }
    /* Japanese mixes kana into Han text: a little kana makes it Japanese */
    if ((best_sc == SC_HAN || best_sc == SC_LATIN) && b->script[SC_KANA] * 4 >= b->script[SC_HAN] &&
        b->script[SC_KANA] >= 2 && b->script[SC_KANA] + b->script[SC_HAN] >= best / 3)
        best_sc = SC_KANA;
    else if (best_sc == SC_LATIN && b->script[SC_HAN] >= 8 && b->script[SC_HAN] >= best / 4)
        best_sc = SC_HAN;
    else if (best_sc == SC_LATIN) {
        /* a non-Latin script that is a good part of the text still names the language:
         * "Translate: <Bengali>" is about Bengali */
        for (int sc = 1; sc < SC_N; sc++) {
            if (b->script[sc] >= 12 && b->script[sc] * 3 >= best) {
                best_sc = sc;
                break;
            }
        }
    }
    *script = SCRIPTS[best_sc].name;
    if (best_sc != SC_LATIN) {
        memcpy(out, SCRIPTS[best_sc].lang, 3);
        return;
    }
    if (b->vi_marks >= 3 && b->vi_marks >= b->yo_marks) {
        memcpy(out, "vi", 3);
        return;
    }
    if (b->yo_marks >= 4 && b->vi_marks * 2 < b->yo_marks) {
        memcpy(out, "yo", 3);
        return;
    }
    static const char CODES[LANG_N][3] = {"en", "fr", "de", "es", "it", "pt", "sw", "yo", "vi"};
    unsigned bv = 0;
    int bl = -1;
    for (int l = 0; l < LANG_N; l++) {
        if (ws->votes[l] > bv) {
            bv = ws->votes[l];
            bl = l;
        }
    }
    /* no stop word at all (a short "Write a haiku"): say so rather than guess */
    if (bl < 0)
        memcpy(out, "und", 4);
    else
        memcpy(out, CODES[bl], 3);
}

static size_t count_fences(const char *s, size_t n)
{
    size_t c = 0;
    const char *end = s + n;
    for (const char *p = memchr(s, '`', n); p != NULL && end - p >= 3;
         p = memchr(p + 1, '`', (size_t)(end - p - 1))) {
        if (p[1] == '`' && p[2] == '`') {
            c++;
            p += 2;
            if (end - p <= 1)
                break;
        }
    }
    return (c + 1) / 2;
}

/* An option list in the instruction: "(Payments, Identity, Search)" or "[a, b, c]" within the
 * first 300 bytes: 3 to 12 short comma-separated items in brackets. */
static bool has_option_list(const char *s, size_t n)
{
    if (s == NULL)
        return false;
    size_t lim = n < 300 ? n : 300;
    for (size_t i = 0; i < lim; i++) {
        if (s[i] != '(' && s[i] != '[')
            continue;
        char close = s[i] == '(' ? ')' : ']';
        int items = 1;
        size_t item_len = 0;
        for (size_t k = i + 1; k < n && k < i + 160; k++) {
            if (s[k] == close) {
                if (items >= 3 && items <= 12 && item_len > 0)
                    return true;
                break;
            }
            if (s[k] == ',') {
                if (item_len == 0 || item_len > 24)
                    break;
                items++;
                item_len = 0;
            } else if (s[k] == '\n' || s[k] == '.' || s[k] == '{' || s[k] == '"' || s[k] == ':') {
                break; /* a sentence, JSON or code, not a list of labels */
            } else if (s[k] != ' ' || item_len > 0) {
                item_len++;
            }
        }
    }
    return false;
}

void tg_router_features(const struct tg_router_policy *p, const struct tg_route_request *req,
                        struct tg_route_features *out)
{
    memset(out, 0, sizeof *out);
    memcpy(out->lang, "und", 4);
    out->script = "none";
    if (p == NULL || req == NULL)
        return;
    out->n_labels = req->n_labels;
    out->has_schema = req->has_schema;

    struct wordscan ws;
    memset(&ws, 0, sizeof ws);
    ws.lex = &p->lex;

    long last_user = -1, first_user = -1;
    bool has_system = false;
    for (size_t i = 0; i < req->n_messages; i++) {
        const struct tg_route_message *m = &req->messages[i];
        if (is_system(m)) {
            has_system = true;
            continue;
        }
        out->n_turns++;
        if (is_role(m, "user")) {
            out->n_user_turns++;
            if (first_user < 0)
                first_user = (long)i;
            last_user = (long)i;
        }
    }

    struct bytestats total, lastb;
    memset(&total, 0, sizeof total);
    memset(&lastb, 0, sizeof lastb);
    size_t fences = 0;
    int64_t tokens = 0, other_tokens = 0;
    for (size_t i = 0; i < req->n_messages; i++) {
        const struct tg_route_message *m = &req->messages[i];
        if (m->content == NULL || m->content_len == 0) {
            tokens += 4;
            continue;
        }
        struct bytestats b;
        memset(&b, 0, sizeof b);
        scan_bytes(m->content, m->content_len, &b);
        tokens += tokens_of(&b) + 4;
        if ((long)i == last_user)
            lastb = b;
        total.math += b.math;
        if ((long)i != last_user && !is_system(m))
            other_tokens += tokens_of(&b);
        for (int sc = 0; sc < SC_N; sc++)
            total.script[sc] += b.script[sc];
        out->pii |= scan_digit_pii(m->content, m->content_len);
        if (has_email(m->content, m->content_len))
            out->pii |= TG_ROUTE_PII_EMAIL;
        fences += count_fences(m->content, m->content_len);
    }
    out->n_prompt_tokens = tokens;
    out->n_code_blocks = (int32_t)fences;
    bool cjk = total.script[SC_HAN] + total.script[SC_KANA] > 0;

    /* word windows: system prompts, the last user message, the first one if different */
    for (size_t i = 0; i < req->n_messages; i++) {
        const struct tg_route_message *m = &req->messages[i];
        if (is_system(m) && m->content != NULL)
            window(&ws, m->content, m->content_len, WIN_SYSTEM, 0, 1.0f, false, false, cjk);
    }
    size_t user_len = 0, passage_len = 0;
    if (last_user >= 0) {
        const struct tg_route_message *m = &req->messages[last_user];
        const char *s = m->content != NULL ? m->content : "";
        user_len = m->content != NULL ? m->content_len : 0;
        size_t ps = passage_start(s, user_len);
        size_t pe = user_len;
        if (ps > 0) {
            passage_len = user_len - ps;
            /* an instruction after the passage ("...\n\nQuestion: ...") is not passage */
            for (size_t k = user_len; k > ps + 2; k--) {
                if (s[k - 1] == '\n' && s[k - 2] == '\n') {
                    if (user_len - k < 250)
                        pe = k;
                    break;
                }
            }
        }
        scan_last_user(&ws, s, user_len, ps, pe, cjk);
        /* a question: a '?' (ASCII or fullwidth) near the head or the tail, or a question word
         * first */
        size_t hq = user_len < WIN_HEAD ? user_len : WIN_HEAD;
        size_t tq = user_len > WIN_TAIL ? user_len - WIN_TAIL : 0;
        out->is_question = ws.first_is_wh || memchr(s, '?', hq) != NULL ||
                           memchr(s + tq, '?', user_len - tq) != NULL ||
                           (cjk && (memmem(s, hq, "\xEF\xBC\x9F", 3) != NULL ||
                                    memmem(s + tq, user_len - tq, "\xEF\xBC\x9F", 3) != NULL));
        /* the passage's share of the message's tokens (no second pass over it) */
        if (user_len > 0)
            out->n_context_tokens =
                (int64_t)((double)tokens_of(&lastb) * (double)passage_len / (double)user_len);
    }
    if (first_user >= 0 && first_user != last_user) {
        const struct tg_route_message *m = &req->messages[first_user];
        if (m->content != NULL)
            window(&ws, m->content, m->content_len, WIN_FIRST_USER, 0, 0.6f, false, false, cjk);
    }
    out->n_context_tokens += other_tokens;

    lang_of(&lastb, &ws, out->lang, &out->script);
    if (ws.target_lang[0] != '\0')
        memcpy(out->target_lang, ws.target_lang, 3);

    out->has_source_text = passage_len >= 60 || user_len >= 1000 || (has_system && user_len >= 80);
    out->has_math = total.math > 0;
    out->n_described_tokens = ws.described_tokens;
    /* only what the text asks for: max_tokens is usually a ceiling, not a request */
    out->n_output_tokens = ws.output_words * 4 / 3;

    /* evidence that comes from features rather than words */
    if (req->endpoint == TG_ROUTE_EP_CLASSIFY || req->n_labels > 0)
        ws.ev[TG_ROUTE_KIND_CLASSIFY] += 10;
    if (req->endpoint == TG_ROUTE_EP_EXTRACT || req->has_schema)
        ws.ev[TG_ROUTE_KIND_EXTRACT] += 10;
    if (fences > 0)
        ws.ev[TG_ROUTE_KIND_CODE] += 3;
    if (lastb.math > 0)
        ws.ev[TG_ROUTE_KIND_PROOF] += 1.5f;
    /* a quoted snippet ("Is this tweet sarcastic? \"...\"") is text to work on, not trivia */
    if (out->is_question && !out->has_source_text && passage_len < 25) {
        ws.ev[TG_ROUTE_KIND_OPEN_QA] += 1.5f;
        if (ws.n_numbers >= 2 && user_len < 400)
            ws.ev[TG_ROUTE_KIND_MATH] += 2.5f;
    }
    if (out->is_question && out->has_source_text)
        ws.ev[TG_ROUTE_KIND_CLOSED_QA] += 2.0f;
    if (ws.caps_pairs > 0)
        ws.ev[TG_ROUTE_KIND_CLASSIFY] += 3.0f;
    if (last_user >= 0 &&
        has_option_list(req->messages[last_user].content, req->messages[last_user].content_len))
        ws.ev[TG_ROUTE_KIND_CLASSIFY] += 2.0f;

    float sum = 0, top = 0;
    int topk = TG_ROUTE_KIND_CHAT;
    for (int k = 0; k < TG_ROUTE_N_KINDS; k++) {
        out->kind_evidence[k] = ws.ev[k];
        sum += ws.ev[k];
        if (ws.ev[k] > top) {
            top = ws.ev[k];
            topk = k;
        }
    }
    out->kind = (enum tg_route_kind)topk;
    out->kind_confidence = sum > 0 ? top / sum : 0;
}
