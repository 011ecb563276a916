#include "tg/err.h"

const char *tg_strerror(int err)
{
    switch (err) {
#define TG_ERR_TEXT(name, value, text) \
    case value:                        \
        return text;
        TG_ERR_MAP(TG_ERR_TEXT)
#undef TG_ERR_TEXT
    }
    return "unknown error";
}

const char *tg_errname(int err)
{
    switch (err) {
#define TG_ERR_NAME(name, value, text) \
    case value:                        \
        return #name;
        TG_ERR_MAP(TG_ERR_NAME)
#undef TG_ERR_NAME
    }
    return "UNKNOWN";
}
