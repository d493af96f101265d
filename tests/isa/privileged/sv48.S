/* Sv48: see paging.h */
#define LEVELS 4
#define SATP_MODE 9
#include "paging.h"
