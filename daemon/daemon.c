/* daemon.c - placeholder until serving lands (issue "Serve a real Avtomatika orchestrator"). */
#include "daemon.h"

#include "log.h"

int daemon_run(struct cfg *cfg)
{
    (void)cfg;
    log_err("serving an orchestrator is not built yet");
    return 1;
}
