<%
needed_text = (': %d are needed' % needed if needed else '') + (', %d so far' % signers if signers else '')
cad_text = ' (%s CAD when requested)' % cad(cad_cents) if cad_cents is not None else ''
%>
% rebase('layout.html.tpl', title='Payout %d waits for your signature' % payout)
<p>Hello {{name}},</p>
<p>you are a co-signer of the {{space}} treasury, and payout {{payout}} waits for
signatures{{needed_text}}.</p>
<table>
<tr><td>payout</td><td>{{payout}} ({{payout_kind}})</td></tr>
<tr><td>amount</td><td>{{sats}} sats = {{btc(sats)}} BTC{{cad_text}}</td></tr>
<tr><td>to</td><td><code>{{destination}}</code></td></tr>
<tr><td>reason</td><td>{{reason}}</td></tr>
<tr><td>requested by</td><td>{{requested_by}}, {{requested_at}}</td></tr>
% if fee is not None:
<tr><td>fee</td><td>{{fee}} sats</td></tr>
% end
% if txid:
<tr><td>transaction</td><td><code>{{txid}}</code></td></tr>
% end
% if replaces:
<tr><td>replaces</td><td>payout {{replaces}}: a fee bump (RBF) of a payout that is stuck; whichever of the two confirms is the payment</td></tr>
% end
% if expires_at:
<tr><td>open until</td><td>{{expires_at}}</td></tr>
% end
</table>
<p>Check it, then sign it in your own wallet or with the software signer:</p>
<pre>dctrl payouts show {{payout}}
dctrl payouts export {{payout}} --out payout-{{payout}}.psbt
dctrl payouts import {{payout}} payout-{{payout}}.psbt   (once your wallet signed it)
dctrl payouts sign {{payout}} --key FILE</pre>
<p>Do not sign what you do not recognise: compare the destination and the amount with
<code>dctrl payouts show {{payout}}</code> and with your wallet's own view of the PSBT.</p>
