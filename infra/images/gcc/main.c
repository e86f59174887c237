#include <math.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    int *v = malloc(100 * sizeof *v); /* valid C, not valid C++: proves gcc compiles .c as C */
    long total = 0;
    for (int i = 0; i < 100; i++) v[i] = i + 1, total += v[i];
    free(v);
    printf("hello from c (gcc %d): %ld\n", __GNUC__, (long)round(sqrt((double)total * total)));
    return 0;
}
