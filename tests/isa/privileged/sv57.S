/* Sv57: see paging.h */
#define LEVELS 5
#define SATP_MODE 10
#include "paging.h"
