Subject: {{space}}: payout {{payout}} waits for your signature ({{btc(sats)}} BTC)
<%
needed_text = (': %d are needed' % needed if needed else '') + (', %d so far' % signers if signers else '')
cad_text = ' (%s CAD when requested)' % cad(cad_cents) if cad_cents is not None else ''
%>

Hello {{name}},

you are a co-signer of the {{space}} treasury, and payout {{payout}} waits for
signatures{{needed_text}}.

    payout        {{payout}} ({{payout_kind}})
    amount        {{sats}} sats = {{btc(sats)}} BTC{{cad_text}}
    to            {{destination}}
    reason        {{reason}}
    requested by  {{requested_by}}, {{requested_at}}
% if fee is not None:
    fee           {{fee}} sats
% end
% if txid:
    transaction   {{txid}}
% end
% if replaces:
    replaces      payout {{replaces}}: a fee bump (RBF) of a payout that is stuck; whichever
                  of the two confirms is the payment
% end
% if expires_at:
    open until    {{expires_at}}
% end

Check it, then sign it in your own wallet or with the software signer:

    dctrl payouts show {{payout}}
    dctrl payouts export {{payout}} --out payout-{{payout}}.psbt
    dctrl payouts import {{payout}} payout-{{payout}}.psbt   (once your wallet signed it)
    dctrl payouts sign {{payout}} --key FILE

Do not sign what you do not recognise: compare the destination and the amount
with `dctrl payouts show {{payout}}` and with your wallet's own view of the PSBT.

{{space}}
