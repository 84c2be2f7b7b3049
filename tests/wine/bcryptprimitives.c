/* Test-only stand-in for Windows 10's bcryptprimitives.dll, for Wine versions before 9.
 *
 * Rust's standard library for Windows imports ProcessPrng from bcryptprimitives.dll; Wine 8
 * (Debian 12) has no such DLL, so every Rust exe fails to load there (status c0000135). The
 * test harness (tests/src/wine.rs) builds this file with x86_64-w64-mingw32-gcc and puts the
 * DLL on the Windows PATH of a test's Wine prefix. It is never part of what ships: on Windows
 * 10 / Server 2016 and later the system's own DLL is used.
 */
#include <windows.h>
#include <ntsecapi.h>

/* Fills `data` with `len` random bytes from the system RNG (RtlGenRandom, advapi32).
 * Like the real ProcessPrng it never fails for a valid buffer; it returns FALSE only if the
 * system RNG does. */
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!RtlGenRandom(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
