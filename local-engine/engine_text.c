/* Text helpers for streaming generated output: UTF-8 boundaries and stop strings. */
#include "engine_int.h"

#include <string.h>

size_t tg_engine_utf8_complete_len(const char *s, size_t len)
{
    /* Walk back over at most 3 continuation bytes to the last lead byte. */
    size_t i = len;
    size_t back = 0;
    while (i > 0 && back < 4) {
        unsigned char c = (unsigned char)s[i - 1];
        if ((c & 0xC0) != 0x80)
            break;
        i--;
        back++;
    }
    if (i == 0)
        return len; /* only continuation bytes: invalid, nothing to wait for */
    unsigned char lead = (unsigned char)s[i - 1];
    size_t need;
    if (lead < 0x80)
        return len;
    else if ((lead & 0xE0) == 0xC0)
        need = 2;
    else if ((lead & 0xF0) == 0xE0)
        need = 3;
    else if ((lead & 0xF8) == 0xF0)
        need = 4;
    else
        return len; /* invalid lead byte */
    size_t have = back + 1;
    if (have < need)
        return i - 1; /* sequence still incomplete: hold it back */
    return len;
}

size_t tg_engine_find_stop(const char *text, size_t len, size_t from, char *const *stop,
                           size_t n_stop)
{
    size_t best = (size_t)-1;
    for (size_t k = 0; k < n_stop; k++) {
        size_t sl = strlen(stop[k]);
        if (sl == 0 || sl > len)
            continue;
        /* A match may straddle `from`: start the search sl - 1 bytes earlier. */
        size_t start = from > sl - 1 ? from - (sl - 1) : 0;
        const char *p = memmem(text + start, len - start, stop[k], sl);
        if (p && (size_t)(p - text) < best)
            best = (size_t)(p - text);
    }
    return best;
}

size_t tg_engine_stop_holdback(const char *text, size_t len, char *const *stop, size_t n_stop)
{
    size_t hold = 0;
    for (size_t k = 0; k < n_stop; k++) {
        size_t sl = strlen(stop[k]);
        /* Proper prefixes only: a full match is handled by tg_engine_find_stop. */
        for (size_t n = sl > 0 ? sl - 1 : 0; n > hold; n--) {
            if (n <= len && memcmp(text + len - n, stop[k], n) == 0) {
                hold = n;
                break;
            }
        }
    }
    return hold;
}
