// Linux-PAM (libpam0g-dev). Imported by CofferAuth only.
#include <security/pam_appl.h>
#include <stdlib.h>
#include <string.h>

// The conversation callback PAM calls; defined in Swift (@convention(c)).
typedef int (*coffer_pam_conv_fn)(int num_msg, const struct pam_message **msg, struct pam_response **resp, void *appdata);

static inline int coffer_pam_start(const char *service, const char *user, coffer_pam_conv_fn fn, void *appdata, pam_handle_t **handle) {
    struct pam_conv conv = { fn, appdata };
    return pam_start(service, user, &conv, handle);
}

// PAM frees what it is given: responses are calloc'd, answers strdup'd.
static inline struct pam_response *coffer_pam_responses(int n) {
    return (struct pam_response *)calloc((size_t)n, sizeof(struct pam_response));
}

static inline void coffer_pam_set_response(struct pam_response *r, int i, const char *text) {
    r[i].resp = text ? strdup(text) : NULL;
    r[i].resp_retcode = 0;
}

static inline const struct pam_message *coffer_pam_message(const struct pam_message **msg, int i) {
    // Linux-PAM passes an array of pointers
    return msg[i];
}
