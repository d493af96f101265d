/* Sv39: see paging.h */
#define LEVELS 3
#define SATP_MODE 8
#include "paging.h"
