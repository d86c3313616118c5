// Simulation model of the Lattice ECP5 MULT18X18D hard multiplier, for the configurations
// rtl_gen instantiates (rtl_gen/products.py): the 18 x 18 product P = A * B, each operand signed
// or unsigned (SIGNEDA, SIGNEDB), with the A and B input registers and the output register
// each either bypassed ("NONE") or clocked by CLK0 with clock enable CE0 and synchronous reset
// RST0. The cascade ports (C, SRI*, SRO*, RO*), the pipeline register, the shift inputs (SOURCEA,
// SOURCEB) and the other clocks are not modelled: an instance using them stops the simulation,
// and parameters only they use are not declared (an instance setting one fails to build).
//
// For simulation only (Verilator, Icarus). Synthesis reads Yosys's black box of the primitive,
// and nextpnr maps it to the device. Behaviour follows Lattice TN1267, "ECP5 and ECP5-5G sysDSP
// Usage Guide" (MULT18X18D: registers, signed operands, 36-bit product).
module MULT18X18D (
    input A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13, A14, A15, A16, A17,
    input B0, B1, B2, B3, B4, B5, B6, B7, B8, B9, B10, B11, B12, B13, B14, B15, B16, B17,
    input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB,
    input CLK0, CE0, RST0,
    output P0, P1, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11, P12, P13, P14, P15, P16, P17, P18, P19, P20, P21, P22, P23, P24, P25, P26, P27, P28, P29, P30, P31, P32, P33, P34, P35
);
    parameter REG_INPUTA_CLK = "NONE";
    parameter REG_INPUTA_CE = "CE0";
    parameter REG_INPUTA_RST = "RST0";
    parameter REG_INPUTB_CLK = "NONE";
    parameter REG_INPUTB_CE = "CE0";
    parameter REG_INPUTB_RST = "RST0";
    parameter REG_INPUTC_CLK = "NONE";
    parameter REG_PIPELINE_CLK = "NONE";
    parameter REG_OUTPUT_CLK = "NONE";
    parameter REG_OUTPUT_CE = "CE0";
    parameter REG_OUTPUT_RST = "RST0";
    // The global set/reset only initialises the registers at configuration: no effect here.
    /* verilator lint_off UNUSEDPARAM */
    parameter GSR = "ENABLED";
    /* verilator lint_on UNUSEDPARAM */
    parameter MULT_BYPASS = "DISABLED";
    parameter RESETMODE = "SYNC";

    initial begin
        if (REG_INPUTA_CLK != "NONE" && REG_INPUTA_CLK != "CLK0")
            $fatal(1, "MULT18X18D model: REG_INPUTA_CLK must be NONE or CLK0");
        if (REG_INPUTB_CLK != "NONE" && REG_INPUTB_CLK != "CLK0")
            $fatal(1, "MULT18X18D model: REG_INPUTB_CLK must be NONE or CLK0");
        if (REG_OUTPUT_CLK != "NONE" && REG_OUTPUT_CLK != "CLK0")
            $fatal(1, "MULT18X18D model: REG_OUTPUT_CLK must be NONE or CLK0");
        if (REG_PIPELINE_CLK != "NONE" || REG_INPUTC_CLK != "NONE")
            $fatal(1, "MULT18X18D model: the pipeline and C registers are not modelled");
        if (REG_INPUTA_CE != "CE0" || REG_INPUTB_CE != "CE0" || REG_OUTPUT_CE != "CE0"
                || REG_INPUTA_RST != "RST0" || REG_INPUTB_RST != "RST0"
                || REG_OUTPUT_RST != "RST0")
            $fatal(1, "MULT18X18D model: only CE0 and RST0 are modelled");
        if (RESETMODE != "SYNC" || MULT_BYPASS != "DISABLED")
            $fatal(1, "MULT18X18D model: only RESETMODE SYNC without bypass is modelled");
    end

    always @(posedge CLK0)
        if (SOURCEA | SOURCEB)
            $fatal(1, "MULT18X18D model: the shift inputs (SOURCEA, SOURCEB) are not modelled");

    wire [17:0] a_in = {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0};
    wire [17:0] b_in = {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0};
    reg [17:0] a_q, b_q;
    reg sa_q, sb_q;
    always @(posedge CLK0) begin
        if (RST0) begin
            a_q <= 18'd0; sa_q <= 1'b0;
            b_q <= 18'd0; sb_q <= 1'b0;
        end else if (CE0) begin
            a_q <= a_in; sa_q <= SIGNEDA;
            b_q <= b_in; sb_q <= SIGNEDB;
        end
    end
    wire [17:0] a = REG_INPUTA_CLK == "CLK0" ? a_q : a_in;
    wire [17:0] b = REG_INPUTB_CLK == "CLK0" ? b_q : b_in;
    wire sa = REG_INPUTA_CLK == "CLK0" ? sa_q : SIGNEDA;
    wire sb = REG_INPUTB_CLK == "CLK0" ? sb_q : SIGNEDB;
    // 19-bit operands: the top bit is the sign bit of a signed operand, 0 for an unsigned one.
    wire signed [18:0] a_x = {sa & a[17], a};
    wire signed [18:0] b_x = {sb & b[17], b};
    wire signed [37:0] product = a_x * b_x;
    reg [35:0] p_q;
    always @(posedge CLK0) begin
        if (RST0) p_q <= 36'd0;
        else if (CE0) p_q <= product[35:0];
    end
    assign {P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0} = REG_OUTPUT_CLK == "CLK0" ? p_q : product[35:0];
endmodule
