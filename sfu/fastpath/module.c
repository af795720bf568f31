/*
 * sfu._fastpath: the module. What each file does is listed in fastpath.h.
 *
 * Crosses into Python: only at import (the types, the functions fanout, addr_key,
 * parse_rtp, and the attribute names the hot path reads, interned once here).
 */
#include "fastpath.h"

PyObject *fp_str_fileno, *fp_str_buffer_size;
PyObject *fp_str_rx_packets, *fp_str_rx_bytes;
PyObject *fp_str_add_reader, *fp_str_remove_reader, *fp_str_call_later;

static PyMethodDef module_methods[] = {
    {"fanout", (PyCFunction)(void (*)(void))fp_py_fanout, METH_FASTCALL,
     "fanout(legs, payload, marker, seq, ts, ssrc, t_in_ns) -> None | [(index, result)]"},
    {"addr_key", fp_py_addr_key, METH_VARARGS,
     "addr_key(host, port) -> the key of a remote address in Reader.set_routes()"},
    {"parse_rtp", fp_py_parse_rtp, METH_VARARGS,
     "parse_rtp(data, abs_send_time_id, mid_id[, rid_id, rrid_id]) -> Packet | None"},
    {NULL},
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sfu._fastpath",
    .m_doc = "Per-subscriber RTP rewrite, SRTP protect and send, in C.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&MeterType) < 0 || PyType_Ready(&LegType) < 0 ||
        PyType_Ready(&PacketType) < 0 || PyType_Ready(&ReaderType) < 0 ||
        PyType_Ready(&TrackType) < 0 || PyType_Ready(&InboundType) < 0 ||
        PyType_Ready(&ArrivalsType) < 0 || PyType_Ready(&RxFlowType) < 0 ||
        PyType_Ready(&RxTallyType) < 0 || PyType_Ready(&LiveType) < 0 || fp_inbound_init_names() < 0 || fp_tally_init() < 0)
        return NULL;
    fp_str_fileno = PyUnicode_InternFromString("fileno");
    fp_str_buffer_size = PyUnicode_InternFromString("_buffer_size");
    /* aiortc 1.16's RTCDtlsTransport counters (checked by sfu.aiortc_hooks) */
    fp_str_rx_packets = PyUnicode_InternFromString("_RTCDtlsTransport__rx_packets");
    fp_str_rx_bytes = PyUnicode_InternFromString("_RTCDtlsTransport__rx_bytes");
    /* the event loop's methods read coalescing calls (reader.c) */
    fp_str_add_reader = PyUnicode_InternFromString("add_reader");
    fp_str_remove_reader = PyUnicode_InternFromString("remove_reader");
    fp_str_call_later = PyUnicode_InternFromString("call_later");
    if (!fp_str_fileno || !fp_str_buffer_size || !fp_str_rx_packets ||
        !fp_str_rx_bytes || !fp_str_add_reader || !fp_str_remove_reader || !fp_str_call_later)
        return NULL;
    PyObject *m = PyModule_Create(&fastpath_module);
    if (!m)
        return NULL;
    Py_INCREF(&MeterType);
    Py_INCREF(&LegType);
    Py_INCREF(&PacketType);
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "Meter", (PyObject *)&MeterType) < 0 ||
        PyModule_AddObject(m, "Leg", (PyObject *)&LegType) < 0 ||
        PyModule_AddObject(m, "Packet", (PyObject *)&PacketType) < 0 ||
        PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType) < 0 ||
        PyModule_AddObject(m, "Track", Py_NewRef(&TrackType)) < 0 ||
        PyModule_AddObject(m, "Inbound", Py_NewRef(&InboundType)) < 0 ||
        PyModule_AddObject(m, "Arrivals", Py_NewRef(&ArrivalsType)) < 0 ||
        PyModule_AddObject(m, "RxFlow", Py_NewRef(&RxFlowType)) < 0 ||
        PyModule_AddObject(m, "RxTally", Py_NewRef(&RxTallyType)) < 0 ||
        PyModule_AddObject(m, "Live", Py_NewRef(&LiveType)) < 0 ||
        PyModule_AddIntConstant(m, "NACK_HISTORY", FP_NACK_HISTORY) < 0 ||
        PyModule_AddIntConstant(m, "READ_BATCH", FP_READ_BATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
