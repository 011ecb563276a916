# Turn a file into a C array (no xxd): cmake -DIN=... -DOUT=... -DSYM=... -P embed.cmake
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" n)
math(EXPR bytes "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," arr "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" arr "${arr}")
file(WRITE "${OUT}.tmp" "/* Generated from ${IN} by embed.cmake; do not edit. */\n#include <stddef.h>\nconst char ${SYM}[] = {\n${arr}0x00};\nconst size_t ${SYM}_len = ${bytes};\n")
file(RENAME "${OUT}.tmp" "${OUT}")
