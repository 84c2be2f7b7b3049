/* Test helper for the Wine tests (never shipped): prints the DACL of a file or folder as SDDL,
 * with the protected flag ("D:P..."), because Wine's icacls and cacls print nothing.
 *
 *   show-dacl.exe PATH   -> one line of SDDL on stdout, exit 0; exit 1 with a message on error.
 */
#include <windows.h>
#include <aclapi.h>
#include <sddl.h>
#include <stdio.h>

int wmain(int argc, wchar_t **argv)
{
    PSECURITY_DESCRIPTOR sd = NULL;
    LPWSTR text = NULL;
    DWORD rc;

    if (argc != 2) {
        fwprintf(stderr, L"usage: show-dacl.exe PATH\n");
        return 2;
    }
    rc = GetNamedSecurityInfoW(argv[1], SE_FILE_OBJECT, DACL_SECURITY_INFORMATION, NULL, NULL,
                               NULL, NULL, &sd);
    if (rc != ERROR_SUCCESS) {
        fwprintf(stderr, L"GetNamedSecurityInfoW(%ls) failed: %lu\n", argv[1], rc);
        return 1;
    }
    if (!ConvertSecurityDescriptorToStringSecurityDescriptorW(sd, SDDL_REVISION_1,
                                                              DACL_SECURITY_INFORMATION, &text,
                                                              NULL)) {
        fwprintf(stderr, L"ConvertSecurityDescriptorToStringSecurityDescriptorW failed: %lu\n",
                 GetLastError());
        LocalFree(sd);
        return 1;
    }
    wprintf(L"%ls\n", text);
    LocalFree(text);
    LocalFree(sd);
    return 0;
}
